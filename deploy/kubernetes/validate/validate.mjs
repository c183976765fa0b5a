// Validates Kubernetes objects offline against the API types (JSON schemas of
// kubernetes-models): reads a multi-document YAML stream (`kubectl kustomize` output) on
// stdin; exits 1 naming each object that fails. `--expect-invalid` inverts the verdict (the
// test's proof that a broken manifest is caught).
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import yaml from "js-yaml";

// The JSON schemas allow fields they do not know (a misspelt `readOnlyRootFilesytem`
// would pass), so unknown fields are found here, from the models' TypeScript
// declarations: each names its interface's fields and the model of each field's type.
const declarations = new Map();
function declarationOf(file) {
  if (declarations.has(file)) return declarations.get(file);
  const text = readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/import \{ (\w+) \} from "([^"]+)";/g)) {
    const from = m[2].startsWith(".")
      ? join(dirname(file), m[2])
      : fileURLToPath(import.meta.resolve(m[2]));
    imports.set(m[1], from.replace(/\.js$/, "") + ".d.ts");
  }
  const fields = new Map();
  // Fields are the interface's lines `    "name"?: Type;` (a map's type spans lines).
  const body = text.match(/export interface \w+[^{]*\{\n([\s\S]*?)\n\}/);
  for (const part of (body ? body[1] : "").split(/\n(?=    "|    \/\*\*)/)) {
    const m = part.match(/^    "([^"]+)"\??: ([\s\S]*)$/);
    if (m) fields.set(m[1], m[2].trim());
  }
  const d = { imports, fields };
  declarations.set(file, d);
  return d;
}
function unknownFields(value, file, at, out) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return;
  const { imports, fields } = declarationOf(file);
  for (const [key, v] of Object.entries(value)) {
    if (!fields.has(key)) {
      out.push(`${at}/${key}: unknown field`);
      continue;
    }
    const type = fields.get(key);
    const ref = type.match(/\bI\w+/g)?.find((t) => imports.has(t));
    if (!ref) continue;
    const inner = imports.get(ref);
    const isMap = type.startsWith("{");
    if (Array.isArray(v)) v.forEach((e, i) => unknownFields(e, inner, `${at}/${key}/${i}`, out));
    else if (isMap && v && typeof v === "object")
      for (const [k, e] of Object.entries(v)) unknownFields(e, inner, `${at}/${key}/${k}`, out);
    else unknownFields(v, inner, `${at}/${key}`, out);
  }
}

const expectInvalid = process.argv.includes("--expect-invalid");
const docs = yaml.loadAll(readFileSync(0, "utf8")).filter((d) => d != null);
if (docs.length === 0) {
  console.error("validate: no objects on stdin");
  process.exit(1);
}

let bad = 0;
for (const obj of docs) {
  const name = `${obj.kind}/${obj.metadata?.name}`;
  // apiVersion "apps/v1" -> kubernetes-models/apps/v1/DaemonSet; "v1" -> kubernetes-models/v1/Pod.
  const path = `kubernetes-models/${obj.apiVersion}/${obj.kind}`;
  let Model;
  try {
    Model = (await import(path))[obj.kind];
  } catch (e) {
    console.error(`validate: ${name}: no model for ${obj.apiVersion} ${obj.kind}`);
    bad++;
    continue;
  }
  try {
    new Model(obj).validate();
    const unknown = [];
    const file = fileURLToPath(import.meta.resolve(path)).replace(/\.js$/, "") + ".d.ts";
    unknownFields(obj, file, "", unknown);
    if (unknown.length) throw new Error(unknown.join(", "));
    if (!expectInvalid) console.log(`validate: ${name} ok`);
  } catch (e) {
    bad++;
    console.error(`validate: ${name}: ${e.message}`);
  }
}
if (expectInvalid) {
  if (bad === 0) {
    console.error("validate: FAIL: a broken manifest passed");
    process.exit(1);
  }
  console.log("validate: the broken manifest was caught");
  process.exit(0);
}
process.exit(bad ? 1 : 0);
