// lookalike web page: search by photo or words, "more like this" (but ...), browse with label filters.
// Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { mode: "start", file: null, item: null, text: "", offset: 0, facets: {}, words: false, detect: false,
                box: null, groups: null, group: 0, rules: [], diversity: null, shopRules: {} };
const RULE_KINDS = ["boost", "bury", "exclude"];
const RULE_WORDS = { boost: "Boost", bury: "Bury", exclude: "Exclude" };
const PAGE = 48;
const SHOWN_LABELS = ["articleType", "baseColour", "gender", "season", "usage"];

// -- talking to the API ------------------------------------------------------------------------------

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) {  // FastAPI validation errors
      detail = detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
    }
    throw new Error(detail || `the server answered ${response.status}`);
  }
  return body;
}

function filterParams() {
  const params = new URLSearchParams();
  document.querySelectorAll("#facets select").forEach((select) => {
    if (select.value) params.append("where", `${select.name}=${select.value}`);
  });
  return params;
}

// The page's own ranking rules (boost / bury / exclude a label value, the variety slider), sent with each search
// as the REST API takes them: repeated boost=, bury=, exclude= fields, diversity=, and rules=false to leave out
// the shop's default rules.
function rankingParams(params) {
  state.rules.forEach((rule) => params.append(rule.kind, rule.term));
  if (state.diversity !== null) params.set("diversity", state.diversity);
  if (!$("shop-rules-on").checked) params.set("rules", "false");
  return params;
}

function searchOptions() {
  const params = filterParams();
  params.set("k", $("k").value);
  if ($("min-sim").value) params.set("min_similarity", $("min-sim").value);
  if ($("dedupe").checked) params.set("dedupe", "true");
  return rankingParams(params);
}

function addRule(kind, term) {
  state.rules = state.rules.filter((rule) => rule.term !== term);  // one rule per label value: the last wins
  state.rules.push({ kind, term });
  showRules();
  rerun();
}

function showRules() {
  const list = $("my-rules");
  list.replaceChildren(...state.rules.map((rule, i) => {
    const li = document.createElement("li");
    li.dataset.testid = "my-rule";
    li.textContent = `${RULE_WORDS[rule.kind]} ${rule.term} `;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "linkish";
    remove.textContent = "remove";
    remove.setAttribute("aria-label", `remove the rule ${rule.kind} ${rule.term}`);
    remove.addEventListener("click", () => { state.rules.splice(i, 1); showRules(); rerun(); });
    li.appendChild(remove);
    return li;
  }));
  const value = state.diversity === null ? Number(state.shopRules.diversity ?? 1) : state.diversity;
  $("diversity").value = value;
  $("diversity-value").textContent = value >= 1 ? "off" : String(value);
}

function showShopRules(rules) {
  state.shopRules = rules;
  const parts = [];
  (rules.pin || []).forEach((id) => parts.push(`pin ${id}`));
  RULE_KINDS.forEach((kind) => (rules[kind] || []).forEach((term) => parts.push(`${kind} ${term}`)));
  if (rules.diversity !== null && rules.diversity !== undefined) parts.push(`variety ${rules.diversity}`);
  $("shop-rules").textContent = parts.length ? parts.join(" · ") : "none";
  showRules();
}

function ruleLabels(facets) {  // the label / value pickers of "Add rule", from the catalog's facets
  const labels = $("rule-label");
  labels.replaceChildren(...Object.keys(facets).map((name) => new Option(name, name)));
  const values = () => $("rule-value").replaceChildren(
    ...Object.keys(facets[labels.value] || {}).map((value) => new Option(value, value)));
  labels.addEventListener("change", values);
  values();
  $("ranking").querySelector(".rule-add").hidden = !labels.options.length;
}

// Describe the rules that moved a result, as the API names them ("boost brand=Acme +0.1", "bury stock=out", ...).
function movedText(rules) {
  return (rules || []).map((rule) => rule === "pin" ? "pinned" : rule.replace(/^diversity /, "variety ")).join(" · ");
}

function rankMenu(node, item) {
  const menu = node.querySelector(".rank-menu");
  const rows = menu.querySelector(".rank-rows");
  Object.entries(item.labels).filter(([name]) => name in state.facets).forEach(([name, joined]) => {
    joined.split(" | ").forEach((value) => {
      const term = `${name}=${value}`;
      const row = document.createElement("div");
      row.className = "rank-row";
      const what = document.createElement("span");
      what.textContent = term;
      row.appendChild(what);
      RULE_KINDS.forEach((kind) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "quiet";
        button.dataset.testid = `card-${kind}`;
        button.dataset.term = term;
        button.textContent = RULE_WORDS[kind];
        button.setAttribute("aria-label", `${kind} items with ${term}`);
        button.addEventListener("click", () => addRule(kind, term));
        row.appendChild(button);
      });
      rows.appendChild(row);
    });
  });
  menu.hidden = !rows.children.length || state.mode === "browse";
}

// -- showing results ---------------------------------------------------------------------------------

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function labelText(labels, predicted) {
  const own = Object.fromEntries(Object.entries(labels).filter(([name]) => !(predicted && name in predicted)));
  const shown = SHOWN_LABELS.filter((name) => own[name]).map((name) => own[name]);
  return (shown.length ? shown : Object.values(own).slice(0, 3)).join(" · ");
}

function predictedText(item) {  // labels from `lookalike tag`: words, not the shop's own data
  return Object.entries(item.predicted || {})
    .map(([name, score]) => `${name}: ${item.labels[name]} (predicted, ${Math.round(score * 100)}%)`).join(" · ");
}

// An item's name for people: its title, else its own labels ("Tshirts · Red"), else "item <id>", never a bare number.
function displayName(item) {
  return item.labels.productDisplayName || labelText(item.labels, item.predicted) || `item ${item.id}`;
}

// A thumbnail that cannot be shown (its photo is gone from the server) becomes a plain note, not a broken icon.
function thumbnail(img, item) {
  const gone = () => {
    const note = document.createElement("span");
    note.className = "gone";
    note.dataset.testid = "photo-missing";
    note.textContent = "photo missing";
    img.replaceWith(note);
  };
  if (item.missing) { gone(); return; }
  img.addEventListener("error", gone, { once: true });
}

// -- what the shopper saw and clicked, sent back for `lookalike evaluate --events` ----------------------

const EVENT_BATCH = 100;  // the server takes a few hundred per request; impressions wait a second to be joined
const pendingEvents = [];
let eventTimer = null;

function sendEvent(queryId, kind, item, position) {
  if (!queryId) return;  // browsing and shop-the-look answers are not logged
  pendingEvents.push({ query_id: queryId, kind, item, position });
  if (kind !== "impression" || pendingEvents.length >= EVENT_BATCH) flushEvents();
  else if (!eventTimer) eventTimer = setTimeout(flushEvents, 1000);
}

function flushEvents() {
  clearTimeout(eventTimer);
  eventTimer = null;
  while (pendingEvents.length) {
    const events = pendingEvents.splice(0, EVENT_BATCH);
    // keepalive: sent even when the click leaves the page; a failure costs the shopper nothing
    fetch("/api/events", { method: "POST", headers: { "Content-Type": "application/json" },
                           body: JSON.stringify({ events }), keepalive: true }).catch(() => {});
  }
}

addEventListener("pagehide", flushEvents);

function card(item, queryId, position) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  const button = node.querySelector("button");
  const img = node.querySelector("img");
  img.src = item.thumbnail_url + (item.thumbnail_url.includes("?") ? "&" : "?") + "size=256";
  const name = displayName(item);
  img.alt = name;
  thumbnail(img, item);
  node.querySelector(".name").textContent = name;
  const titled = Boolean(item.labels.productDisplayName);
  node.querySelector(".labels").textContent = titled ? labelText(item.labels, item.predicted) : `id ${item.id}`;
  const guessed = node.querySelector(".predicted");
  guessed.textContent = predictedText(item);
  guessed.hidden = !guessed.textContent;
  const score = node.querySelector(".score");
  if (typeof item.similarity === "number") {
    const percent = Math.max(0, Math.round(item.similarity * 100));
    score.innerHTML = `${percent}% <span class="bar"><i style="width:${percent}%"></i></span>`;
    button.setAttribute("aria-label", `${name}, ${percent}% similar. Show items like this`);
    button.title = `similarity ${item.similarity.toFixed(3)}, distance ${item.distance.toFixed(3)}`;
  } else {
    score.remove();
    button.setAttribute("aria-label", `${name}. Show items like this`);
  }
  const moved = node.querySelector(".moved");
  moved.textContent = movedText(item.rules);
  moved.hidden = !moved.textContent;
  rankMenu(node, item);
  button.dataset.id = item.id;
  button.addEventListener("click", () => {
    sendEvent(queryId, "click", item.id, position);
    location.hash = itemHash(item.id);
  });
  return node;
}

function showItems(items, append, queryId) {
  const list = $("results");
  if (!append) list.replaceChildren();
  items.forEach((item, n) => {
    list.appendChild(card(item, queryId, n));
    sendEvent(queryId, "impression", item.id, n);
  });
}

function showQueryItem(item) {
  const box = $("query-item");
  $("refine").hidden = !item || !state.words;
  if (!item) { box.hidden = true; box.replaceChildren(); return; }
  const img = document.createElement("img");
  img.src = item.thumbnail_url + "&size=192";
  img.alt = displayName(item);
  thumbnail(img, item);
  const text = document.createElement("div");
  text.innerHTML = "<strong></strong><br><span></span><br><span class=\"predicted\"></span>";
  text.querySelector("strong").textContent = displayName(item);
  const own = labelText(item.labels, item.predicted);
  text.querySelector("span").textContent = `id ${item.id}` + (own ? ` · ${own}` : "");
  text.querySelector(".predicted").textContent = predictedText(item);
  box.replaceChildren(img, text);
  box.hidden = false;
}

function title(text) { $("results-title").textContent = text; }

// -- the three things a user does ----------------------------------------------------------------------

function go(hash) {  // the address keeps the query (Back works, links can be shared); same address: search again
  if (location.hash.slice(1) === hash) route(); else location.hash = hash;
}

function itemHash(id, words) {
  return "item=" + encodeURIComponent(id) + (words ? "&text=" + encodeURIComponent(words) : "");
}

async function searchText(words) {
  showError("");
  words = (words || "").trim();
  if (!words) return;
  state.mode = "text"; state.text = words; state.item = null; state.file = null;
  $("text").value = words;
  hidePreview();
  showQueryItem(null);
  $("more").hidden = true;
  title("Searching…");
  const form = new FormData();
  form.append("text", words);
  searchOptions().forEach((value, key) => form.append(key, value));
  try {
    const answer = await api("/api/search", { method: "POST", body: form });
    showItems(answer.results, false, answer.query_id);
    const how = answer.query.kind === "keywords" ? " in their titles and labels (keyword search)" : "";
    title(answer.results.length
      ? `${answer.results.length} items matching “${words}”${how} (${Math.round(answer.took_ms)} ms)`
      : (how ? "No titles or labels hold these words." : "No items match these filters."));
  } catch (err) {
    $("results").replaceChildren();
    title("Those words could not be searched.");
    showError(err.message);
  }
}

async function searchFile(file) {
  showError("");
  if (!file) return;
  state.mode = "upload"; state.file = file; state.item = null; state.text = ""; state.box = null; state.groups = null;
  if (location.hash) history.pushState(null, "", location.pathname + location.search);
  const preview = $("query-img");
  if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
  preview.dataset.url = URL.createObjectURL(file);
  preview.hidden = true;  // shown once the browser could draw it: never a broken-image icon
  preview.onload = () => { fit(preview); preview.hidden = false; $("photo-frame").hidden = false; showPhotoTools(); };
  preview.onerror = () => { preview.hidden = true; $("photo-frame").hidden = true; };
  preview.src = preview.dataset.url;
  preview.alt = `your photo ${file.name || ""}`;
  clearRegions();
  showQueryItem(null);
  $("more").hidden = true;
  title("Searching…");
  const form = new FormData();
  form.append("image", file, file.name || "pasted-image");
  searchOptions().forEach((value, key) => form.append(key, value));
  try {
    const answer = await api("/api/search", { method: "POST", body: form });
    showItems(answer.results, false, answer.query_id);
    title(answer.results.length
      ? `${answer.results.length} items most like your photo (${Math.round(answer.took_ms)} ms)`
      : "No items match these filters.");
  } catch (err) {
    $("results").replaceChildren();
    hidePreview();  // a file the server could not read leaves no broken-image icon behind
    title("That photo could not be searched.");
    showError(err.message);
  }
}

function hidePreview() {
  const preview = $("query-img");
  preview.hidden = true;
  preview.removeAttribute("src");
  $("photo-frame").hidden = true;
  $("photo-tools").hidden = true;
  clearRegions();
}

// -- part of the photo: a rectangle the shopper drags, or the items a detector finds ("shop the look") ---------

// The photo at the largest size the panel allows, small photos enlarged too, its proportions kept: the frame is
// exactly the picture, so a point on it is a fraction of the photo.
function fit(img) {
  const room = Math.max(120, $("drop").clientWidth - 40);
  const scale = Math.min(room / img.naturalWidth, 280 / img.naturalHeight);
  img.style.width = `${Math.round(img.naturalWidth * scale)}px`;
  img.style.height = `${Math.round(img.naturalHeight * scale)}px`;
}

function clearRegions() { $("regions").replaceChildren(); }

function showPhotoTools() {
  $("photo-tools").hidden = false;
  $("detect").hidden = !state.detect;
  $("whole").hidden = state.mode === "upload";
}

function photoForm(extra) {
  const form = new FormData();
  form.append("image", state.file, state.file.name || "pasted-image");
  searchOptions().forEach((value, key) => form.append(key, value));
  Object.entries(extra).forEach(([key, value]) => [].concat(value).forEach((v) => form.append(key, v)));
  return form;
}

function place(node, box) {  // box: fractions [x0, y0, x1, y1] of the photo as shown
  node.style.left = `${box[0] * 100}%`; node.style.top = `${box[1] * 100}%`;
  node.style.width = `${(box[2] - box[0]) * 100}%`; node.style.height = `${(box[3] - box[1]) * 100}%`;
}

async function searchRegion(box) {
  showError("");
  state.mode = "region"; state.box = box; state.groups = null;
  showPhotoTools();
  clearRegions();
  const drawn = document.createElement("div");
  drawn.className = "drawn";
  drawn.dataset.testid = "drawn-box";
  place(drawn, box);
  $("regions").appendChild(drawn);
  title("Searching…");
  try {
    const answer = await api("/api/search", { method: "POST", body: photoForm({ box: box.join(",") }) });
    showItems(answer.results, false, answer.query_id);
    title(answer.results.length
      ? `${answer.results.length} items most like the part of your photo you marked (${Math.round(answer.took_ms)} ms)`
      : "No items match these filters.");
  } catch (err) {
    $("results").replaceChildren();
    title("That part of the photo could not be searched.");
    showError(err.message);
  }
}

async function detectItems() {
  showError("");
  state.mode = "look"; state.box = null;
  showPhotoTools();
  clearRegions();
  title("Looking for the items in your photo…");
  try {
    const answer = await api("/api/detect", { method: "POST", body: photoForm({}) });
    state.groups = answer.groups;
    const [width, height] = answer.size;
    answer.groups.forEach((group, i) => {
      const box = document.createElement("button");
      box.type = "button";
      box.className = "found";
      box.dataset.testid = "found-box";
      box.dataset.label = group.label;
      const percent = Math.round(group.score * 100);
      box.setAttribute("aria-label", `${group.label} (${percent}%): show items like it`);
      box.innerHTML = "<span></span>";
      box.querySelector("span").textContent = `${group.label} ${percent}%`;
      place(box, [group.box[0] / width, group.box[1] / height, group.box[2] / width, group.box[3] / height]);
      box.addEventListener("click", (e) => { e.stopPropagation(); showGroup(i); });
      $("regions").appendChild(box);
    });
    if (answer.groups.length) showGroup(0);
    else {
      $("results").replaceChildren();
      title("No items were found in your photo; drag over an item to search it.");
    }
  } catch (err) {
    $("results").replaceChildren();
    title("The items in that photo could not be found.");
    showError(err.message);
  }
}

function showGroup(i) {
  state.group = i;
  const group = state.groups[i];
  document.querySelectorAll("#regions .found").forEach((node, j) => {
    node.classList.toggle("selected", i === j);
    node.setAttribute("aria-pressed", String(i === j));
  });
  showItems(group.results);
  title(`${state.groups.length} items found in your photo. ${group.results.length} look like the ` +
        `${group.label} (${Math.round(group.score * 100)}%):`);
}

function dragToSearch() {
  const layer = $("regions");
  let start = null, drawn = null;
  const at = (e) => {
    const r = layer.getBoundingClientRect();
    return [Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)),
            Math.min(1, Math.max(0, (e.clientY - r.top) / r.height))];
  };
  const corners = (a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  layer.addEventListener("click", (e) => e.stopPropagation());  // the drop zone's click opens the file picker
  layer.addEventListener("pointerdown", (e) => {
    if (e.target.closest(".found") || e.button !== 0) return;
    e.preventDefault();
    layer.setPointerCapture(e.pointerId);
    start = at(e);
    drawn = document.createElement("div");
    drawn.className = "drawn";
    layer.appendChild(drawn);
  });
  layer.addEventListener("pointermove", (e) => { if (start) place(drawn, corners(start, at(e))); });
  const finish = (e) => {
    if (!start) return;
    const box = corners(start, at(e)).map((v) => Math.round(v * 10000) / 10000);
    const r = layer.getBoundingClientRect();
    start = null;
    drawn.remove();
    // A click or a tiny rectangle is not a region: under 8 screen pixels either way it is ignored.
    if ((box[2] - box[0]) * r.width < 8 || (box[3] - box[1]) * r.height < 8) return;
    searchRegion(box);
  };
  layer.addEventListener("pointerup", finish);
  layer.addEventListener("pointercancel", () => { if (drawn) drawn.remove(); start = null; });
}

async function similarTo(id, words) {
  showError("");
  hidePreview();
  words = (words || "").trim();
  state.mode = "item"; state.item = id; state.text = words;
  $("more").hidden = true;
  $("refine-text").value = words;
  title("Searching…");
  const params = searchOptions();
  if (words) params.set("text", words);
  try {
    const [item, answer] = await Promise.all([
      api(`/api/items/${encodeURIComponent(id)}`),
      api(`/api/items/${encodeURIComponent(id)}/similar?${params}`),
    ]);
    showQueryItem(item);
    showItems(answer.results, false, answer.query_id);
    const what = displayName(item);
    title(answer.results.length
      ? `${answer.results.length} items most like ${what}${words ? `, but “${words}”` : ""} (${Math.round(answer.took_ms)} ms)`
      : "No other items match these filters.");
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (err) {
    showQueryItem(null);
    $("results").replaceChildren();
    title("Nothing to show.");
    showError(err.message);
  }
}

async function browse(append) {
  showError("");
  state.mode = "browse"; state.item = null; state.text = "";
  if (!append) state.offset = 0;
  showQueryItem(null);
  hidePreview();
  const params = filterParams();
  params.set("offset", state.offset); params.set("limit", PAGE);
  try {
    const page = await api(`/api/items?${params}`);
    showItems(page.items, append);
    state.offset += page.items.length;
    title(`Catalog: ${page.total} items${params.getAll("where").length ? " matching the filters" : ""}. ` +
          "Pick one to see its look-alikes.");
    $("more").hidden = state.offset >= page.total;
    updateFacetCounts(page.facets);
  } catch (err) {
    showError(err.message);
  }
}

// The filters live in the address's query (?where=colour%3Dred&k=50&dedupe=true), so a shared link keeps them;
// the query itself (an item, words) lives in its #fragment.
function keepFiltersInAddress() {
  const params = filterParams();
  if ($("k").value !== $("k").dataset.initial) params.set("k", $("k").value);
  if ($("min-sim").value) params.set("min_similarity", $("min-sim").value);
  if ($("dedupe").checked) params.set("dedupe", "true");
  rankingParams(params);
  const query = params.toString();
  history.replaceState(history.state, "", location.pathname + (query ? "?" + query : "") + location.hash);
}

function filtersFromAddress() {
  const params = new URLSearchParams(location.search);
  params.getAll("where").forEach((term) => {
    const at = term.indexOf("=");
    const select = [...document.querySelectorAll("#facets select")].find((s) => s.name === term.slice(0, at));
    if (select && [...select.options].some((o) => o.value === term.slice(at + 1))) select.value = term.slice(at + 1);
  });
  const k = params.get("k");
  if (k && [...$("k").options].some((o) => o.value === k)) $("k").value = k;
  const min = params.get("min_similarity");
  if (min && [...$("min-sim").options].some((o) => o.value === min)) $("min-sim").value = min;
  $("dedupe").checked = params.get("dedupe") === "true";
  state.rules = RULE_KINDS.flatMap((kind) => params.getAll(kind).map((term) => ({ kind, term })));
  const diversity = Number(params.get("diversity"));
  state.diversity = params.has("diversity") && diversity >= 0 && diversity <= 1 ? diversity : null;
  $("shop-rules-on").checked = params.get("rules") !== "false";
  showRules();
  $("clear-filters").hidden = !filterParams().toString();
}

function rerun() {
  keepFiltersInAddress();
  if (state.mode === "upload") searchFile(state.file);
  else if (state.mode === "region") searchRegion(state.box);
  else if (state.mode === "look") detectItems();
  else if (state.mode === "text") searchText(state.text);
  else if (state.mode === "item") similarTo(state.item, state.text);
  else browse(false);
  $("clear-filters").hidden = !filterParams().toString();
}

// -- filters from the catalog's label facets ----------------------------------------------------------

function buildFacets(facets, predicted) {
  const holder = $("facets");
  holder.replaceChildren();
  Object.entries(facets).filter(([, values]) => Object.keys(values).length > 1).forEach(([name, values]) => {
    const label = document.createElement("label");
    label.textContent = (predicted || []).includes(name) ? `${name} (predicted)` : name;
    const select = document.createElement("select");
    select.name = name;
    select.dataset.testid = `facet-${name}`;
    select.appendChild(new Option("all", ""));
    Object.entries(values).forEach(([value, count]) => select.appendChild(new Option(`${value} (${count})`, value)));
    select.addEventListener("change", rerun);
    label.appendChild(select);
    holder.appendChild(label);
  });
}

function updateFacetCounts(facets) {
  document.querySelectorAll("#facets select").forEach((select) => {
    const counts = facets[select.name] || {};
    [...select.options].slice(1).forEach((option) => {
      option.textContent = `${option.value} (${counts[option.value] || 0})`;
    });
  });
}

// -- wiring ----------------------------------------------------------------------------------------

function route() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has("item")) similarTo(hash.get("item"), hash.get("text"));
  else if (hash.has("text")) searchText(hash.get("text"));
  else if (hash.has("browse")) browse(false);
}

async function start() {
  const drop = $("drop"), file = $("file");
  drop.addEventListener("click", () => file.click());  // the whole zone is a target for the mouse
  $("choose").addEventListener("click", (e) => { e.stopPropagation(); file.click(); });  // and for the keyboard
  file.addEventListener("change", () => { searchFile(file.files[0]); file.value = ""; });
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const dropped = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/")) || e.dataTransfer.files[0];
    searchFile(dropped);
  });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => e.preventDefault());  // a missed drop must not open the file
  document.addEventListener("paste", (e) => {
    const pasted = [...(e.clipboardData || {}).items || []].find((it) => it.kind === "file");
    if (pasted) { e.preventDefault(); searchFile(pasted.getAsFile()); }
  });
  $("words").addEventListener("submit", (e) => {
    e.preventDefault();
    const words = $("text").value.trim();
    if (words) go("text=" + encodeURIComponent(words));
  });
  $("refine").addEventListener("submit", (e) => {
    e.preventDefault();
    if (state.item !== null) go(itemHash(state.item, $("refine-text").value.trim()));
  });
  dragToSearch();
  $("detect").addEventListener("click", detectItems);
  $("whole").addEventListener("click", () => searchFile(state.file));
  $("k").addEventListener("change", rerun);
  $("min-sim").addEventListener("change", rerun);
  $("dedupe").addEventListener("change", rerun);
  $("shop-rules-on").addEventListener("change", rerun);
  $("diversity").addEventListener("input", () => {
    $("diversity-value").textContent = Number($("diversity").value) >= 1 ? "off" : $("diversity").value;
  });
  $("diversity").addEventListener("change", () => { state.diversity = Number($("diversity").value); rerun(); });
  $("rule-add").addEventListener("click", () => {
    if ($("rule-label").value && $("rule-value").value) {
      addRule($("rule-kind").value, `${$("rule-label").value}=${$("rule-value").value}`);
    }
  });
  $("more").addEventListener("click", () => browse(true));
  $("clear-filters").addEventListener("click", () => {
    document.querySelectorAll("#facets select").forEach((s) => { s.value = ""; });
    rerun();
  });
  window.addEventListener("hashchange", route);
  $("filters-box").open = window.matchMedia("(min-width: 641px)").matches;
  $("k").dataset.initial = $("k").value;

  try {
    const [health, page, rules] = await Promise.all([api("/api/health"), api("/api/items?limit=0"),
                                                     api("/api/rules")]);
    $("summary").textContent = `${health.items} items · ${health.model.split(" ")[0]} on ${health.device}`;
    state.words = Boolean(health.text);
    state.detect = Boolean(health.detect);
    $("words").hidden = false;  // words are searched as keywords even where the model has no text tower
    state.facets = page.facets;
    buildFacets(page.facets, page.predicted_labels);
    ruleLabels(page.facets);
    showShopRules(rules);
    filtersFromAddress();
  } catch (err) {
    showError(`The server is not answering: ${err.message}`);
  }
  route();
}

document.addEventListener("DOMContentLoaded", start);
