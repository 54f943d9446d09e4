// The profile explorer: plain DOM, no framework, no build step. Everything shown from the service
// goes through textContent or a number-only style (never innerHTML), so tag names, feature values
// and error details cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const PIN = "X-UTPM-Model-Version";
let arms = null; // GET /experiment

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function headers(extra) {
  const h = Object.assign({ "content-type": "application/json" }, extra || {});
  const key = $("api-key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function call(method, path, body, extra) {
  const init = { method, headers: headers(extra) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  return { status: r.status, ok: r.ok, data };
}

function problemText(res) {
  const d = res.data || {};
  const detail = d.detail || d.title || "no details";
  if (res.status === 401) return `This needs an API key (401): ${detail}`;
  if (res.status === 403) return `The API key is not allowed to do this (403): ${detail}`;
  return `${d.title || "Error"} (${res.status}): ${detail}`;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
  m.hidden = !text;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

// -- arms and the features form --------------------------------------------------------------
async function loadArms() {
  const res = await call("GET", "/experiment");
  if (!res.ok) {
    $("arms").textContent = problemText(res);
    return;
  }
  arms = res.data;
  const parts = [`champion ${arms.champion.model_version} (${arms.champion.model})`];
  if (arms.challenger) {
    const pct = Math.round(arms.challenger_share * 1000) / 10;
    parts.push(`challenger ${arms.challenger.model_version} (${arms.challenger.model}) for ${pct}% of users`);
  } else {
    parts.push("no challenger");
  }
  $("arms").textContent = parts.join(" · ");
  const fields = $("fields");
  clear(fields);
  for (const name of arms.champion.fields) {
    const label = el("label", name + " ");
    const input = el("input");
    input.dataset.field = name;
    input.placeholder = "comma-separated values";
    label.appendChild(input);
    fields.appendChild(label);
  }
}

function servedArms() {
  const list = [["champion", arms.champion.model_version]];
  if (arms.challenger) list.push(["challenger", arms.challenger.model_version]);
  return list;
}

// -- rendering -------------------------------------------------------------------------------
function bars(tags, shared) {
  const box = el("div", null, "bars");
  const top = Math.max(1e-9, ...tags.map((t) => Math.abs(t.score)));
  for (const t of tags) {
    const row = el("div", null, "row" + (shared && shared.has(t.tag) ? " shared" : ""));
    row.dataset.tag = t.tag;
    const name = el("span", t.tag, "tag");
    name.title = t.tag;
    const track = el("div", null, "track");
    const bar = el("div", null, "bar");
    bar.style.width = `${Math.max(0, (100 * t.score) / top).toFixed(1)}%`;
    track.appendChild(bar);
    row.append(name, track, el("span", Number(t.score).toFixed(3), "score"));
    box.appendChild(row);
  }
  return box;
}

function heat(weight) {
  const w = Math.min(1, Math.max(0, Number(weight) || 0));
  return `hsl(214, 75%, ${(97 - 55 * w).toFixed(1)}%)`;
}

function heatTable(caption, rowNames, heads, cell) {
  const table = el("table", null, "heat");
  table.appendChild(el("caption", caption));
  const head = el("tr");
  head.appendChild(el("th", ""));
  for (let h = 0; h < heads; h++) head.appendChild(el("th", `head ${h + 1}`));
  table.appendChild(head);
  rowNames.forEach((name, i) => {
    const tr = el("tr");
    tr.appendChild(el("th", name));
    for (let h = 0; h < heads; h++) {
      const w = cell(i, h);
      const td = el("td", Number(w).toFixed(2), "cell");
      td.style.backgroundColor = heat(w);
      if (w > 0.6) td.style.color = "#fff";
      td.title = `${name}, head ${h + 1}: ${Number(w).toFixed(4)}`;
      tr.appendChild(td);
    }
    table.appendChild(tr);
  });
  return table;
}

function heatmap(explanation) {
  const box = $("heatmap");
  clear(box);
  if (!explanation) {
    box.appendChild(el("p", "Type features to see the attention of every value (a lookup has none).", "muted"));
    return;
  }
  const fields = explanation.fields;
  box.appendChild(heatTable("merge weight per field", fields.map((f) => f.field), explanation.heads,
    (i, h) => fields[i].merge_weights[h]));
  for (const f of fields) {
    if (!f.values.length) continue;
    box.appendChild(heatTable(f.field, f.values.map((v) => v.value), explanation.heads,
      (i, h) => f.values[i].weights[h]));
  }
}

function sideBySide(profiles) {
  // profiles: [{arm, version, tags | null, note}]
  const box = $("sidebyside");
  clear(box);
  const sets = profiles.filter((p) => p.tags).map((p) => new Set(p.tags.map((t) => t.tag)));
  let shared = new Set();
  if (sets.length === 2) {
    shared = new Set([...sets[0]].filter((t) => sets[1].has(t)));
    const union = new Set([...sets[0], ...sets[1]]);
    $("overlap").textContent = `${shared.size} of ${Math.max(sets[0].size, sets[1].size)} tags shared ` +
      `(Jaccard ${(shared.size / Math.max(1, union.size)).toFixed(2)}); shared tags in green.`;
  } else {
    $("overlap").textContent = arms && arms.challenger ? "Only one arm has a profile of this user." :
      "No challenger is served: one arm only.";
  }
  for (const p of profiles) {
    const col = el("div", null, "column");
    col.dataset.arm = p.arm;
    col.appendChild(el("h3", `${p.arm} · ${p.version}`));
    if (p.tags) col.appendChild(bars(p.tags, shared));
    else col.appendChild(el("p", p.note, "muted"));
    box.appendChild(col);
  }
}

function showProfile(title, profile) {
  $("result").hidden = false;
  $("profile-title").textContent = title;
  const box = $("profile");
  clear(box);
  box.appendChild(bars(profile.tags));
}

// -- actions ---------------------------------------------------------------------------------
async function lookup(event) {
  event.preventDefault();
  if (!arms) await loadArms();
  const user = $("user-id").value.trim();
  const k = Number($("lookup-k").value) || 10;
  if (!user) return;
  say("");
  const path = `/profile/${encodeURIComponent(user)}?k=${k}`;
  const main = await call("GET", path);
  if (!main.ok) {
    $("result").hidden = true;
    if (main.status === 404) say(`No profile for user “${user}”: ${(main.data || {}).detail || "not cached"}`, true);
    else say(problemText(main), true);
    return;
  }
  const p = main.data;
  showProfile(`User ${p.user_id}: the ${p.arm} arm's profile (${p.model_version}${p.stale ? ", stale" : ""})`, p);
  heatmap(null);
  const columns = [];
  for (const [arm, version] of servedArms()) {
    const res = await call("GET", path, undefined, { [PIN]: version });
    columns.push({ arm, version, tags: res.ok ? res.data.tags : null,
      note: res.ok ? "" : res.status === 404 ? "No profile cached under this version." : problemText(res) });
  }
  sideBySide(columns);
}

function typedFeatures() {
  const features = {};
  for (const input of document.querySelectorAll("#fields input")) {
    const values = input.value.split(",").map((v) => v.trim()).filter((v) => v);
    if (values.length) features[input.dataset.field] = values;
  }
  return features;
}

async function compute(event) {
  event.preventDefault();
  if (!arms) await loadArms();
  const k = Number($("features-k").value) || 10;
  const user = $("user-id").value.trim() || "explorer";
  const body = { user_id: user, features: typedFeatures(), k, explain: true, store: false };
  say("");
  const results = [];
  for (const [arm, version] of servedArms()) {
    results.push({ arm, version, res: await call("POST", "/profile", body, { [PIN]: version }) });
  }
  const failed = results.find((r) => !r.res.ok);
  if (failed) {
    $("result").hidden = true;
    say(problemText(failed.res), true);
    return;
  }
  const first = results[0].res.data;
  const unknown = Object.entries(first.unknown || {}).map(([f, v]) => `${f}: ${v.join(", ")}`);
  if (first.all_unknown) say("No value is in the vocabulary: the profile is the model's prior.", false);
  else if (unknown.length) say(`Not in the vocabulary (ignored): ${unknown.join("; ")}`, false);
  showProfile(`Typed features: the champion's profile (${first.model_version})`, first);
  heatmap(first.explanation);
  sideBySide(results.map((r) => ({ arm: r.arm, version: r.version, tags: r.res.data.tags })));
}

function fmt(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

async function refreshOnline() {
  const box = $("online");
  const res = await call("GET", "/feedback/summary?days=1");
  clear(box);
  if (!res.ok) {
    box.appendChild(el("p", problemText(res), "muted"));
    return;
  }
  const table = el("table", null, "online");
  const head = el("tr");
  for (const h of ["arm", "model version", "user-days", "QC per user-day", "DCTR", "clicked tags", "browsed tags", "events"]) {
    head.appendChild(el("th", h));
  }
  table.appendChild(head);
  for (const [arm, a] of Object.entries(res.data.arms)) {
    const t = a.totals;
    const tr = el("tr");
    tr.dataset.arm = arm;
    for (const v of [arm, a.model_version, t.users, fmt(t.qc, 3), fmt(t.dctr, 3), t.sum_c, t.sum_b, t.events]) {
      tr.appendChild(el("td", v));
    }
    table.appendChild(tr);
  }
  box.appendChild(table);
  const d = res.data.difference;
  if (d) {
    const ci = (e) => (e.ci95 ? ` (95% CI ${fmt(e.ci95[0], 3)} to ${fmt(e.ci95[1], 3)})` : "");
    box.appendChild(el("p", `challenger − champion: QC ${fmt(d.qc.diff, 3)}${ci(d.qc)}, DCTR ${fmt(d.dctr.diff, 3)}${ci(d.dctr)}`));
    box.appendChild(el("p", d.method, "muted"));
  }
}

$("lookup-form").addEventListener("submit", lookup);
$("features-form").addEventListener("submit", compute);
$("api-key").addEventListener("change", () => { loadArms(); refreshOnline(); });
$("key-form").addEventListener("submit", (event) => { event.preventDefault(); loadArms(); refreshOnline(); });
loadArms();
refreshOnline();
setInterval(refreshOnline, 5000);
