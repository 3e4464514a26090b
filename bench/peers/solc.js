// Compiles one Solidity standard-JSON input with solcjs (the `solc` npm package).
// Usage: node solc.js <solc package> <root> < input.json > output.json
// Imports resolve against <root> first, then <root>/node_modules (npm-installed peers).
// Prints {"version": <compiler version>, "output": <standard-JSON output>}.
"use strict";
const fs = require("fs");
const path = require("path");

const solc = require(process.argv[2]);
const root = process.argv[3];

function findImports(name) {
  for (const base of [root, path.join(root, "node_modules")]) {
    const file = path.join(base, name);
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `not found: ${name}` };
}

const input = fs.readFileSync(0, "utf8");
const output = JSON.parse(solc.compile(input, { import: findImports }));
process.stdout.write(JSON.stringify({ version: solc.version(), output }));
