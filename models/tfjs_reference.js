// The original runtime's outputs for the conversion test: runs a TF.js graph model on TensorFlow.js
// (the pure-JavaScript CPU backend of the npm package @tensorflow/tfjs, no native binaries) and
// writes each output as raw little-endian float32.  A development-time tool, used by
// `python -m models.make_nanodet --reference`:
//
//   node models/tfjs_reference.js MODEL.json INPUT.f32 OUTDIR      (NODE_PATH must reach @tensorflow/tfjs)
//
// INPUT.f32: the input tensor, raw float32, in the shape the model's signature declares.
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

async function main() {
  const [modelJson, inputFile, outDir] = process.argv.slice(2);
  const graph = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const weightSpecs = [];
  const buffers = [];
  for (const group of graph.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(path.dirname(modelJson), p)));
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  await tf.setBackend('cpu');
  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: graph.modelTopology, weightSpecs, weightData, format: graph.format,
    generatedBy: graph.generatedBy, convertedBy: graph.convertedBy, signature: graph.signature,
  }));
  const [inName, inSpec] = Object.entries(graph.signature.inputs)[0];
  const shape = inSpec.tensorShape.dim.map((d) => Number(d.size));
  const raw = fs.readFileSync(inputFile);
  const input = tf.tensor(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), shape, 'float32');
  const names = Object.keys(graph.signature.outputs);
  const outputs = await model.executeAsync({ [inName]: input }, names);
  fs.mkdirSync(outDir, { recursive: true });
  names.forEach((name, i) => {
    const data = outputs[i].dataSync();
    const file = path.join(outDir, name.replace(/:0$/, '') + '.f32');
    fs.writeFileSync(file, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    console.log(`${name} ${JSON.stringify(outputs[i].shape)} -> ${file}`);
  });
}

main().catch((err) => { console.error(err); process.exit(1); });
