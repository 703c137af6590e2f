// Checks librechat.yaml texts against LibreChat's own schema, as LibreChat does at start:
// js-yaml's load, then the zod `configSchema` of librechat-data-provider.
// stdin: a JSON list of YAML texts; stdout: a JSON list, for each text
// {"ok": true} or {"ok": false, "issues": ["<path>: <message>", ...]}, and the
// package's config version as {"version": "..."} first.
const { configSchema, Constants } = require("librechat-data-provider");
const yaml = require("js-yaml");

const texts = JSON.parse(require("fs").readFileSync(0, "utf8"));
const results = texts.map((text) => {
  const parsed = configSchema.safeParse(yaml.load(text));
  if (parsed.success) return { ok: true };
  return { ok: false, issues: parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`) };
});
process.stdout.write(JSON.stringify([{ version: Constants.CONFIG_VERSION }, ...results]));
