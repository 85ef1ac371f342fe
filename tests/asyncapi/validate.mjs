// Validate an AsyncAPI document with the official parser (@asyncapi/parser): prints its diagnostics
// as JSON lines, exits 1 if any is an error. Usage: node validate.mjs <asyncapi.yaml>
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const path = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await parser.parse(await readFile(path, "utf8"), { source: path });
let errors = 0;
for (const d of diagnostics) {
  // severity 0 is an error (Spectral's DiagnosticSeverity); warnings and hints are printed too
  if (d.severity === 0) errors += 1;
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
if (document === undefined || errors > 0) {
  console.log(JSON.stringify({ result: "invalid", errors }));
  process.exit(1);
}
console.log(JSON.stringify({ result: "valid", channels: document.channels().length, operations: document.operations().length }));
