// Validate one glTF binary (.glb) file with the Khronos glTF validator and print its report as JSON.
//
// Usage: node tests/validate_gltf.js MODULE_DIR FILE.glb
//   MODULE_DIR: a folder where `npm install --prefix MODULE_DIR gltf-validator` was run
//   (tests/gltf_validator.py manages it, outside the repository).
// Prints {validatorVersion, numErrors, numWarnings, numInfos, numHints, messages}; exit code 0 when the
// report was produced (whatever it says), 2 for bad usage or an exception.
'use strict';
const fs = require('fs');
const path = require('path');

async function main() {
  if (process.argv.length !== 4) {
    console.error('usage: node validate_gltf.js MODULE_DIR FILE.glb');
    process.exit(2);
  }
  const [moduleDir, file] = process.argv.slice(2);
  const validator = require(path.join(path.resolve(moduleDir), 'node_modules', 'gltf-validator'));
  const bytes = new Uint8Array(fs.readFileSync(file));
  // maxIssues 0 = no limit. A GLB needs no external resources, so none are resolved.
  const report = await validator.validateBytes(bytes, { uri: path.basename(file), maxIssues: 0 });
  const out = Object.assign({ validatorVersion: report.validatorVersion }, report.issues);
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  console.error(String(err && err.stack ? err.stack : err));
  process.exit(2);
});
