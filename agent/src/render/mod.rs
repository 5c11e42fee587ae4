//! Outputs of `cowtrace report`: the terminal text and the HTML page with
//! its plots. They render saved reports only and know nothing of the kernel.

pub mod html;
pub mod layers;
pub mod plots;
pub mod terminal;
