//! Which image layer each copy-up, whiteout and opaque directory came
//! from, and which build instruction made that layer.
//!
//! A container's root filesystem is an overlay whose lower layers are its
//! image's layers (plus Docker's `-init` layer). Lower layers are read-only,
//! so the layer behind an event can be found from userspace after the
//! event: the topmost lower layer that holds the entry's path. That is done
//! off the event path by a worker thread ([`worker`]), which learns each
//! container's layers from the runtime and Docker's layer bookkeeping
//! ([`image`]), podman's containers-storage ([`storage`]) or, when no
//! runtime says, the container's root overlay ([`mounted`]), and walks the lower directories without following a symlink
//! ([`lookup`]). [`totals`] aggregates per container and layer.

pub mod advice;
pub mod changes;
pub mod image;
pub mod lookup;
pub mod mounted;
pub mod pending;
pub mod storage;
pub mod totals;
pub mod unchanged;
pub mod worker;

use crate::event::escape_str;
use serde_json::{json, Value};
use std::sync::Arc;

/// An image layer as the outputs name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    /// Position in the image's `RootFS.Layers`, 0 being the base layer.
    pub index: u32,
    /// That entry of `RootFS.Layers` (`sha256:...`); `None` where the
    /// runtime does not say (layers known only by their position in the
    /// container's overlay, [`mounted`]).
    pub diff_id: Option<String>,
    /// The history instruction that made the layer, when the image's
    /// history says (`None` when it does not line up with the layers).
    pub created_by: Option<String>,
}

impl LayerRef {
    /// `{"index", "diff_id", "created_by"}`; strings come from the image
    /// and are escaped like paths.
    pub fn json(&self) -> Value {
        json!({
            "index": self.index,
            "diff_id": self.diff_id.as_deref().map(escape_str),
            "created_by": self.created_by.as_deref().map(escape_str),
        })
    }
}

/// What is known of the layer behind one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerAnswer {
    /// The topmost image layer holding the entry.
    Layer(Arc<LayerRef>),
    /// No image layer holds it: the overlay is no container's, the entry is
    /// in Docker's `-init` layer, or in no lower layer at all.
    NoLayer,
    /// It could not be found out: the runtime gave no layer data, the
    /// path was cut by the kernel, a lookup failed or took too long.
    Unknown(Unknown),
}

/// Why an event's layer is not known (counted, never silent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// The kernel cut the path (too deep or a name too long).
    PathCut,
    /// The runtime did not say what the container's layers are.
    NoLayerData,
    /// A lower directory could not be read.
    LookupFailed,
    /// No answer before the event had to go out.
    TooSlow,
}

impl Unknown {
    /// Every reason, in the order of `layers_unknown_why`.
    pub const ALL: [Unknown; 4] = [
        Unknown::PathCut,
        Unknown::NoLayerData,
        Unknown::LookupFailed,
        Unknown::TooSlow,
    ];

    /// Its key in the JSON's `layers_unknown_why`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unknown::PathCut => "path_cut",
            Unknown::NoLayerData => "no_layer_data",
            Unknown::LookupFailed => "lookup_failed",
            Unknown::TooSlow => "too_slow",
        }
    }
}

impl LayerAnswer {
    /// The event's `layer` field: the layer, or `null`.
    pub fn event_json(&self) -> Value {
        match self {
            LayerAnswer::Layer(l) => l.json(),
            _ => Value::Null,
        }
    }
}
