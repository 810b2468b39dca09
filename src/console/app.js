// Keyward console: vanilla JavaScript over the node's own HTTP API. Untrusted text (documents,
// tag values, index names, node ids) only ever reaches the page through textContent and
// createTextNode, never through innerHTML; the Content-Security-Policy forbids inline script too.
"use strict";

(function () {
  const KEY_STORAGE = "keyward.apiKey";
  const PAGE_SIZE = 10;
  const CLUSTER_REFRESH_MS = 3000;
  const SNIPPET_CHARS = 200;

  const $ = (id) => document.getElementById(id);

  // ---- small helpers -------------------------------------------------------------------------

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (k === "text") e.textContent = v;
        else if (k === "className") e.className = v;
        else if (k.startsWith("data-")) e.setAttribute(k, v);
        else e[k] = v;
      }
    }
    for (const c of children || []) {
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // Kept in memory too, for browsers where sessionStorage is disabled.
  let memoryKey = "";

  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || memoryKey;
    } catch (_) {
      return memoryKey;
    }
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const key = apiKey();
    if (key) headers.Authorization = "Bearer " + key;
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "network", "cannot reach the node: " + e.message);
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (_) {
      data = null;
    }
    if (!resp.ok) {
      const err = data && data.error ? data.error : {};
      let msg = err.message || resp.status + " " + resp.statusText;
      if (resp.status === 401) msg += " — enter an API key above";
      throw new ApiError(resp.status, err.code || "http_" + resp.status, msg);
    }
    return data;
  }

  function showError(node, err) {
    if (err) {
      node.textContent = err.message || String(err);
      node.hidden = false;
    } else {
      node.textContent = "";
      node.hidden = true;
    }
  }

  function num(v) {
    return typeof v === "number" && isFinite(v) ? v : null;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") return v.toLocaleString("en-US");
    if (typeof v === "boolean") return v ? "yes" : "no";
    return String(v);
  }

  // The server's snippets are HTML-escaped text with matches wrapped in <em>…</em>. Rather than
  // trusting that string as markup, split it on the two markers, decode the entities of each
  // piece back to plain text, and build text nodes and <em> elements from the pieces.
  const ENTITIES = { "&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&#39;": "'", "&#x27;": "'" };

  function decodeEntities(s) {
    return s.replace(/&(?:lt|gt|amp|quot|#39|#x27);/g, (m) => ENTITIES[m]);
  }

  function renderSnippet(snippet) {
    const frag = document.createDocumentFragment();
    let inMark = false;
    for (const part of String(snippet).split(/(<em>|<\/em>)/)) {
      if (part === "<em>") {
        inMark = true;
      } else if (part === "</em>") {
        inMark = false;
      } else if (part) {
        const text = decodeEntities(part);
        frag.appendChild(inMark ? el("em", { className: "hl", text }) : document.createTextNode(text));
      }
    }
    return frag;
  }

  function shorten(s) {
    const chars = Array.from(s);
    return chars.length > SNIPPET_CHARS ? chars.slice(0, SNIPPET_CHARS).join("") + "…" : s;
  }

  // ---- search page ---------------------------------------------------------------------------

  const search = {
    indexes: [], // IndexMeta values from GET /indexes
    current: null, // the selected IndexMeta
    offset: 0,
    total: 0,
    seq: 0, // answers to older requests are dropped
    filterSeq: 0,
  };

  function fieldsOf(meta, kind) {
    const fields = (meta && meta.def && meta.def.fields) || {};
    return Object.keys(fields)
      .filter((f) => fields[f] && fields[f].type === kind)
      .sort();
  }

  async function loadIndexes() {
    const sel = $("index-select");
    let data;
    try {
      data = await api("GET", "/indexes");
    } catch (e) {
      showError($("search-error"), e);
      return;
    }
    showError($("search-error"), null);
    search.indexes = (data && Array.isArray(data.indexes) ? data.indexes : []).filter(
      (m) => m && m.def && typeof m.def.name === "string"
    );
    search.indexes.sort((a, b) => a.def.name.localeCompare(b.def.name));
    const previous = sel.value;
    clear(sel);
    if (search.indexes.length === 0) {
      sel.appendChild(el("option", { value: "", text: "(no indexes)" }));
      selectIndex(null);
      return;
    }
    for (const m of search.indexes) {
      sel.appendChild(el("option", { value: m.def.name, text: m.def.name }));
    }
    const keep = search.indexes.find((m) => m.def.name === previous);
    sel.value = keep ? previous : search.indexes[0].def.name;
    selectIndex(search.indexes.find((m) => m.def.name === sel.value) || null);
  }

  async function selectIndex(meta) {
    search.current = meta;
    search.offset = 0;
    const box = $("tag-filters");
    clear(box);
    clear($("facets"));
    clear($("results"));
    setTotal(0);
    if (!meta) return;
    const seq = ++search.filterSeq;
    const tagFields = fieldsOf(meta, "tags");
    if (tagFields.length === 0) {
      box.appendChild(el("p", { className: "muted", text: "This index has no tag fields." }));
    }
    // Fetch every tag field's values first, then build the panel in one go, so the test and
    // the user never see a half-built filter list.
    const lists = await Promise.all(
      tagFields.map((f) =>
        api("GET", "/indexes/" + encodeURIComponent(meta.def.name) + "/tags/" + encodeURIComponent(f)).then(
          (d) => ({ field: f, values: (d && d.values) || {} }),
          (e) => ({ field: f, error: e })
        )
      )
    );
    if (seq !== search.filterSeq) return;
    for (const l of lists) box.appendChild(tagFieldset(l));
    box.setAttribute("data-ready", "1");
    runSearch();
  }

  function tagFieldset(list) {
    const fs = el("fieldset", { className: "tag-field", "data-field": list.field });
    const mode = el("select", { className: "tag-mode", "data-field": list.field, title: "How the ticked values combine" });
    for (const [v, label] of [
      ["all", "all of"],
      ["any", "any of"],
      ["none", "none of"],
    ]) {
      mode.appendChild(el("option", { value: v, text: label }));
    }
    mode.addEventListener("change", () => {
      search.offset = 0;
      runSearch();
    });
    fs.appendChild(el("legend", {}, [list.field + " ", mode]));
    if (list.error) {
      fs.appendChild(el("p", { className: "error", text: list.error.message }));
      return fs;
    }
    const values = Object.entries(list.values).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    if (values.length === 0) fs.appendChild(el("p", { className: "muted", text: "no values yet" }));
    for (const [value, count] of values) {
      const box = el("input", {
        type: "checkbox",
        className: "tag-filter",
        "data-field": list.field,
        "data-value": value,
      });
      box.addEventListener("change", () => {
        search.offset = 0;
        runSearch();
      });
      fs.appendChild(el("label", { className: "tag-option" }, [box, " " + value + " ", el("span", { className: "count", text: "(" + fmt(count) + ")" })]));
    }
    return fs;
  }

  function tagFilters() {
    const out = {};
    for (const fs of document.querySelectorAll("#tag-filters fieldset.tag-field")) {
      const field = fs.getAttribute("data-field");
      const modeSel = fs.querySelector("select.tag-mode");
      const mode = modeSel ? modeSel.value : "all";
      const ticked = Array.from(fs.querySelectorAll("input.tag-filter:checked")).map((b) => b.getAttribute("data-value"));
      if (ticked.length === 0) continue;
      out[mode] = out[mode] || {};
      out[mode][field] = ticked;
    }
    return Object.keys(out).length ? out : null;
  }

  function setTotal(n) {
    search.total = n;
    $("total").textContent = fmt(n);
    const from = n === 0 ? 0 : search.offset + 1;
    const to = Math.min(search.offset + PAGE_SIZE, n);
    $("page-info").textContent = n > 0 ? "— showing " + from + "–" + to : "";
    $("prev").disabled = search.offset === 0;
    $("next").disabled = search.offset + PAGE_SIZE >= n;
  }

  async function runSearch() {
    const meta = search.current;
    const results = $("results");
    if (!meta) return;
    const seq = ++search.seq;
    results.setAttribute("data-state", "loading");
    const q = $("q").value.trim();
    const body = {
      limit: PAGE_SIZE,
      offset: search.offset,
      highlight: true,
      facets: fieldsOf(meta, "tags"),
    };
    if (q) body.q = q;
    const tags = tagFilters();
    if (tags) body.tags = tags;
    let data;
    try {
      data = await api("POST", "/indexes/" + encodeURIComponent(meta.def.name) + "/search", body);
    } catch (e) {
      if (seq !== search.seq) return;
      showError($("search-error"), e);
      results.setAttribute("data-state", "error");
      results.setAttribute("data-seq", String(seq));
      return;
    }
    if (seq !== search.seq) return;
    showError($("search-error"), null);
    renderResults(meta, data || {});
    results.setAttribute("data-state", "done");
    results.setAttribute("data-seq", String(seq));
  }

  function renderResults(meta, data) {
    const results = $("results");
    clear(results);
    const hits = Array.isArray(data.hits) ? data.hits : [];
    const textFields = fieldsOf(meta, "text");
    const tagFields = fieldsOf(meta, "tags");
    for (const h of hits) {
      if (!h) continue;
      const doc = h.doc && typeof h.doc === "object" ? h.doc : {};
      const hl = h.highlights && typeof h.highlights === "object" ? h.highlights : {};
      const idText = typeof h.id === "string" ? h.id : JSON.stringify(h.id);
      const li = el("li", { className: "hit", "data-id": idText });
      const head = el("div", { className: "hit-head" }, [el("span", { className: "hit-id", text: idText })]);
      if (num(h.score) !== null) head.appendChild(el("span", { className: "hit-score", text: "score " + h.score.toFixed(2) }));
      li.appendChild(head);
      for (const f of textFields) {
        let body = null;
        if (typeof hl[f] === "string") {
          body = el("div", { className: "hit-field highlighted", "data-field": f });
          body.appendChild(renderSnippet(hl[f]));
        } else if (typeof doc[f] === "string") {
          body = el("div", { className: "hit-field", "data-field": f, text: shorten(doc[f]) });
        }
        if (body) {
          li.appendChild(el("div", { className: "hit-row" }, [el("span", { className: "field-name", text: f }), body]));
        }
      }
      for (const f of tagFields) {
        const vals = Array.isArray(doc[f]) ? doc[f] : doc[f] !== undefined && doc[f] !== null ? [doc[f]] : [];
        if (vals.length === 0) continue;
        const chips = el("div", { className: "hit-tags", "data-field": f });
        for (const v of vals) chips.appendChild(el("span", { className: "chip", text: String(v) }));
        li.appendChild(el("div", { className: "hit-row" }, [el("span", { className: "field-name", text: f }), chips]));
      }
      results.appendChild(li);
    }
    if (hits.length === 0) results.appendChild(el("li", { className: "no-hits muted", text: "No documents match." }));
    setTotal(num(data.total) !== null ? data.total : hits.length);
    renderFacets(data.facets);
  }

  function renderFacets(facets) {
    const box = $("facets");
    clear(box);
    if (!facets || typeof facets !== "object") return;
    for (const field of Object.keys(facets).sort()) {
      const counts = facets[field] || {};
      const ul = el("ul", { className: "facet", "data-field": field });
      const entries = Object.entries(counts).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
      for (const [value, count] of entries) {
        // A facet value ticks the matching filter box, which starts a new search.
        const btn = el("button", { type: "button", className: "facet-value", "data-field": field, "data-value": value }, [
          value + " ",
          el("span", { className: "count", text: fmt(count) }),
        ]);
        btn.addEventListener("click", () => {
          for (const b of document.querySelectorAll("#tag-filters input.tag-filter")) {
            if (b.getAttribute("data-field") === field && b.getAttribute("data-value") === value) {
              b.checked = !b.checked;
              search.offset = 0;
              runSearch();
            }
          }
        });
        ul.appendChild(el("li", {}, [btn]));
      }
      box.appendChild(el("div", { className: "facet-block" }, [el("h3", { text: field }), ul]));
    }
  }

  function setupSearch() {
    $("index-select").addEventListener("change", (e) => {
      selectIndex(search.indexes.find((m) => m.def.name === e.target.value) || null);
    });
    $("search-form").addEventListener("submit", (e) => {
      e.preventDefault();
      search.offset = 0;
      runSearch();
    });
    let timer = null;
    $("q").addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        search.offset = 0;
        runSearch();
      }, 250);
    });
    $("prev").addEventListener("click", () => {
      search.offset = Math.max(0, search.offset - PAGE_SIZE);
      runSearch();
    });
    $("next").addEventListener("click", () => {
      if (search.offset + PAGE_SIZE < search.total) {
        search.offset += PAGE_SIZE;
        runSearch();
      }
    });
  }

  // ---- cluster page --------------------------------------------------------------------------

  let clusterTimer = null;

  function setText(id, v) {
    $(id).textContent = fmt(v);
  }

  async function refreshCluster() {
    let data;
    try {
      data = await api("GET", "/cluster.json");
    } catch (e) {
      showError($("cluster-error"), e);
      return;
    }
    showError($("cluster-error"), null);
    data = data || {};
    const own = data.ownership && typeof data.ownership === "object" ? data.ownership : {};
    const cache = data.cache && typeof data.cache === "object" ? data.cache : {};
    const srch = data.search && typeof data.search === "object" ? data.search : {};
    setText("cluster-node", data.node);
    setText("cluster-mode", own.mode);
    setText("cluster-master", own.master === undefined ? null : own.master === null ? "none" : own.master);
    setText("cluster-epoch", own.epoch);
    setText("cluster-members", Array.isArray(own.members) && own.members.length ? own.members.join(", ") : null);
    setText("cluster-sessions", own.sessions);
    setText("cluster-ports", own.ports);

    const rate = num(cache.hit_rate);
    $("cache-hit-rate").textContent = rate === null ? "–" : (rate * 100).toFixed(1) + " %";
    for (const k of ["hits", "misses", "forwards", "flushes", "entries", "bytes", "dirty"]) setText("cache-" + k, cache[k]);

    const nodesBody = $("cluster-nodes").tBodies[0];
    clear(nodesBody);
    const nodes = Array.isArray(own.nodes) ? own.nodes : [];
    for (const n of nodes) {
      if (!n) continue;
      const id = n.node === undefined || n.node === null ? "?" : String(n.node);
      const tr = el("tr", { className: "node-row", "data-node": id }, [
        el("td", { className: "node-id", text: id + (id === data.node ? " (this node)" : "") }),
        el("td", { className: "node-ports", text: fmt(n.ports) }),
        el("td", { className: "node-push", text: fmt(n.push_channel) }),
      ]);
      nodesBody.appendChild(tr);
    }
    if (nodesBody.rows.length === 0) nodesBody.appendChild(el("tr", {}, [el("td", { colSpan: 3, className: "muted", text: "no nodes reported" })]));

    const idxBody = $("cluster-indexes").tBodies[0];
    clear(idxBody);
    const idx = Array.isArray(srch.indexes) ? srch.indexes : [];
    for (const i of idx) {
      if (!i) continue;
      idxBody.appendChild(
        el("tr", { "data-index": String(i.name) }, [el("td", { text: String(i.name) }), el("td", { text: fmt(i.documents) })])
      );
    }
    if (idx.length === 0) idxBody.appendChild(el("tr", {}, [el("td", { colSpan: 2, className: "muted", text: "search not running or no indexes" })]));
    $("cluster-updated").textContent = new Date().toLocaleTimeString();
  }

  function startCluster() {
    stopCluster();
    refreshCluster();
    clusterTimer = setInterval(refreshCluster, CLUSTER_REFRESH_MS);
  }

  function stopCluster() {
    if (clusterTimer !== null) clearInterval(clusterTimer);
    clusterTimer = null;
  }

  // ---- routing and the key field --------------------------------------------------------------

  function route() {
    const page = location.hash === "#cluster" ? "cluster" : "search";
    $("page-search").hidden = page !== "search";
    $("page-cluster").hidden = page !== "cluster";
    $("nav-search").classList.toggle("active", page === "search");
    $("nav-cluster").classList.toggle("active", page === "cluster");
    if (page === "cluster") startCluster();
    else stopCluster();
  }

  function setupKey() {
    $("api-key").value = apiKey();
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const v = $("api-key").value.trim();
      memoryKey = v;
      try {
        if (v) sessionStorage.setItem(KEY_STORAGE, v);
        else sessionStorage.removeItem(KEY_STORAGE);
      } catch (_) {
        // Storage may be disabled: memoryKey then holds the key until the page reloads.
      }
      loadIndexes();
      if (clusterTimer !== null) refreshCluster();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupKey();
    setupSearch();
    window.addEventListener("hashchange", route);
    route();
    loadIndexes();
  });
})();
