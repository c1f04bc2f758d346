// numd dashboard: follows /api/v1/events (a snapshot, then coalesced updates) and draws
// the totals, a histogram of the sorted list and a virtually scrolled table of clients.
// No framework and no build step; everything is written with textContent, never HTML.
"use strict";

(() => {
  const ROW_HEIGHT = 30; // px, the CSS --row-h
  const OVERSCAN = 8; // rows drawn above and below the visible ones
  const TOKEN_KEY = "numd-api-token";
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  const clients = new Map(); // id -> {id, number, last_given, connected, last_seen, version}
  let serverTime = 0; // the daemon's clock at the last event ...
  let receivedAt = 0; // ... and ours when it arrived
  let list = null;
  let view = []; // the clients that pass the filter, sorted
  let viewStale = true;
  let sortKey = "id";
  let sortDir = 1;
  let filterText = "";
  let onlyConnected = false;
  let frameQueued = false;
  let source = null;

  // -- applying events ----------------------------------------------------------------

  function applyRows(fields, rows) {
    const at = {};
    fields.forEach((name, i) => { at[name] = i; });
    for (const row of rows) {
      const id = row[at.id];
      const old = clients.get(id);
      clients.set(id, {
        id,
        number: row[at.number],
        last_given: row[at.last_given],
        connected: row[at.connected],
        last_seen: row[at.last_seen],
        version: old ? old.version + 1 : 0,
      });
    }
  }

  let fields = ["id", "number", "last_given", "connected", "last_seen"];

  function applySnapshot(snapshot) {
    fields = snapshot.client_fields;
    clients.clear();
    applyRows(fields, snapshot.clients);
    setTime(snapshot.time);
    showTotals(snapshot.totals);
    showList(snapshot.list);
    viewStale = true;
    schedule();
  }

  function applyUpdate(update) {
    if (update.clients.length) {
      applyRows(fields, update.clients);
      viewStale = true;
    }
    setTime(update.time);
    showTotals(update.totals);
    if (update.list) showList(update.list);
    schedule();
  }

  function setTime(time) {
    serverTime = time;
    receivedAt = performance.now();
  }

  function now() {
    return serverTime + (performance.now() - receivedAt) / 1000;
  }

  // -- totals and the list ------------------------------------------------------------

  const fmt = new Intl.NumberFormat();
  /** "1 value", "3,002 values". */
  const values = (n) => `${fmt.format(n)} ${n === 1 ? "value" : "values"}`;
  const show = (id, value) => {
    const text = value === null || value === undefined ? "–" : typeof value === "number" ? fmt.format(value) : String(value);
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  };

  function showTotals(t) {
    show("t-connected", t.clients_connected);
    show("t-known", t.clients_known);
    show("t-in-rate", t.in_per_second);
    show("t-out-rate", t.out_per_second);
    show("t-in", t.messages_in);
    show("t-out", t.messages_out);
    show("t-errors", t.errors);
    show("t-size", t.list_size);
    showInstances(t.instances);
  }

  // With Redis, the numd instances sharing the state (null: this one alone).
  function showInstances(instances) {
    const card = $("instances-card");
    card.hidden = !instances;
    if (!instances) return;
    show("t-instances", instances.length);
    const list = $("instances");
    const items = instances.map((i) => {
      const n = Number(i.clients) || 0;
      return `${i.name}: ${fmt.format(n)} ${n === 1 ? "client" : "clients"}`;
    });
    if (list.dataset.items === items.join("\n")) return;
    list.dataset.items = items.join("\n");
    list.replaceChildren(...items.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    }));
  }

  function showList(l) {
    list = l;
    show("l-size", l.size);
    show("l-first", l.first);
    show("l-last", l.last);
    show("l-width", l.bin_width);
    show("axis-first", l.first);
    show("axis-last", l.last);
    drawHistogram(l);
  }

  function drawHistogram(l) {
    const svg = $("histogram");
    const width = 600;
    const height = 180;
    svg.replaceChildren();
    const tallest = l.size ? Math.max(...l.bins) : 0;
    $("axis-top").textContent = l.size ? `tallest bar: ${values(tallest)}` : "";
    for (const f of [0.25, 0.5, 0.75]) {
      const line = document.createElementNS(SVG, "line");
      line.setAttribute("class", "grid");
      line.setAttribute("x1", "0");
      line.setAttribute("x2", String(width));
      line.setAttribute("y1", String(height * f));
      line.setAttribute("y2", String(height * f));
      svg.appendChild(line);
    }
    if (!l.size) {
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("class", "empty-text");
      text.setAttribute("x", String(width / 2));
      text.setAttribute("y", String(height / 2));
      text.setAttribute("text-anchor", "middle");
      text.textContent = "the list is empty";
      svg.appendChild(text);
      return;
    }
    const bins = l.bins;
    const top = Math.max(...bins);
    const slot = width / bins.length;
    const gap = bins.length > 60 ? 0 : Math.min(2, slot * 0.15);
    bins.forEach((count, i) => {
      const low = l.first + i * l.bin_width;
      const high = Math.min(low + l.bin_width - 1, l.last);
      const h = count ? Math.max(1.5, (count / top) * (height - 6)) : 0;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", "bar-rect");
      rect.setAttribute("x", String(i * slot + gap / 2));
      rect.setAttribute("width", String(Math.max(slot - gap, 0.5)));
      rect.setAttribute("y", String(height - h));
      rect.setAttribute("height", String(h));
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${fmt.format(low)} – ${fmt.format(high)}: ${fmt.format(count)}`;
      rect.appendChild(title);
      svg.appendChild(rect);
    });
  }

  // -- the clients table: sort, filter, virtual scrolling -------------------------------

  const keyOf = {
    id: (c) => c.id,
    number: (c) => c.number,
    last_given: (c) => (c.last_given === null ? -Infinity : c.last_given),
    connected: (c) => (c.connected ? 1 : 0),
    last_seen: (c) => c.last_seen,
  };

  function rebuildView() {
    const key = keyOf[sortKey];
    const text = filterText;
    const out = [];
    for (const c of clients.values()) {
      if (onlyConnected && !c.connected) continue;
      if (text && !String(c.id).includes(text) && !String(c.number).includes(text)) continue;
      out.push(c);
    }
    out.sort((a, b) => {
      const d = key(a) - key(b);
      return d ? d * sortDir : a.id - b.id;
    });
    view = out;
    viewStale = false;
    const total = clients.size;
    $("c-count").textContent = view.length === total ? `(${fmt.format(total)})` : `(${fmt.format(view.length)} of ${fmt.format(total)})`;
    $("empty").hidden = view.length > 0 || total === 0;
    $("spacer").style.height = `${view.length * ROW_HEIGHT}px`;
  }

  function age(seconds) {
    if (seconds < 1) return "now";
    if (seconds < 60) return `${Math.floor(seconds)} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function makeRow() {
    const row = document.createElement("div");
    row.className = "row";
    row.setAttribute("role", "row");
    for (const name of ["id", "state", "number", "given", "seen"]) {
      const cell = document.createElement("span");
      cell.className = name;
      cell.setAttribute("role", "cell");
      row.appendChild(cell);
    }
    return row;
  }

  function renderRows() {
    const scroller = $("scroller");
    const box = $("rows");
    const first = Math.max(0, Math.floor(scroller.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const count = Math.ceil(scroller.clientHeight / ROW_HEIGHT) + 2 * OVERSCAN;
    const last = Math.min(view.length, first + count);
    // Keep the header's columns over the rows' when the scroller shows a scroll bar.
    const gutter = `${scroller.offsetWidth - scroller.clientWidth}px`;
    const head = document.querySelector(".table-head");
    if (head.style.paddingRight !== gutter) head.style.paddingRight = gutter;
    box.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    while (box.children.length < last - first) box.appendChild(makeRow());
    while (box.children.length > last - first) box.lastChild.remove();
    const t = now();
    for (let i = first; i < last; i++) {
      const c = view[i];
      const row = box.children[i - first];
      const [id, state, number, given, seen] = row.children;
      const changed = row.dataset.id === String(c.id) && row.dataset.version !== String(c.version);
      row.dataset.id = String(c.id);
      row.dataset.version = String(c.version);
      row.classList.toggle("on", c.connected);
      setText(id, String(c.id));
      setText(state, c.connected ? "connected" : "gone");
      setText(number, fmt.format(c.number));
      setText(given, c.last_given === null ? "–" : String(c.last_given));
      setText(seen, age(Math.max(0, t - c.last_seen)));
      seen.title = new Date(c.last_seen * 1000).toLocaleString();
      if (changed) {
        row.classList.remove("flash");
        void row.offsetWidth; // restart the animation
        row.classList.add("flash");
      }
    }
  }

  function render() {
    frameQueued = false;
    if (viewStale) rebuildView();
    renderRows();
  }

  function schedule() {
    if (!frameQueued) {
      frameQueued = true;
      requestAnimationFrame(render);
    }
  }

  function setSort(key) {
    if (key === sortKey) sortDir = -sortDir;
    else {
      sortKey = key;
      sortDir = key === "id" ? 1 : -1;
    }
    markSort();
    viewStale = true;
    schedule();
  }

  function markSort() {
    for (const b of document.querySelectorAll(".table-head button")) {
      b.setAttribute("aria-sort", b.dataset.sort === sortKey ? (sortDir > 0 ? "ascending" : "descending") : "none");
    }
  }

  // -- the live stream ----------------------------------------------------------------

  function setLink(state, text) {
    const el = $("link");
    el.dataset.state = state;
    el.textContent = text;
  }

  function connect() {
    source = new EventSource("/api/v1/events");
    source.addEventListener("snapshot", (e) => applySnapshot(JSON.parse(e.data)));
    source.addEventListener("update", (e) => applyUpdate(JSON.parse(e.data)));
    source.onopen = () => setLink("live", "live");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (e.g. too many streams): show a snapshot now and try again later.
        setLink("lost", "not live, retrying");
        source.close();
        fetch("/api/v1/snapshot", { cache: "no-store" })
          .then((r) => (r.ok ? r.json() : null))
          .then((s) => s && applySnapshot(s))
          .catch(() => {});
        setTimeout(connect, 5000);
      } else {
        setLink("lost", "reconnecting…");
      }
    };
  }

  // -- changing the list (with the API token when the daemon asks for one) -------------

  let pending = null; // the action waiting for a token

  function status(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  async function call(method, path) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(path, { method, headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      const error = new Error(token ? "the daemon refused that token" : "the daemon wants an API token");
      error.unauthorized = true;
      throw error;
    }
    if (!response.ok) throw new Error(body.message || `${response.status} ${response.statusText}`);
    return body;
  }

  async function run(action) {
    const buttons = [$("add"), $("clear"), $("confirm-yes")];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      status(await action(), false);
    } catch (error) {
      if (error.unauthorized) {
        pending = action;
        $("token-form").hidden = false;
        $("token").focus();
      }
      status(error.message, true);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  const addValue = async () => {
    const body = await call("POST", "/api/v1/values");
    return `Added ${body.added.join(", ")}; the list now holds ${values(body.size)}.`;
  };

  const clearList = async () => {
    const body = await call("DELETE", "/api/v1/values");
    return `Cleared ${values(body.removed)}.`;
  };

  function wire() {
    $("add").addEventListener("click", () => run(addValue));
    $("clear").addEventListener("click", () => {
      const size = list ? list.size : 0;
      $("confirm-text").textContent = `Clear all ${values(size)} from the list? This cannot be undone.`;
      $("confirm").hidden = false;
      $("confirm-no").focus();
    });
    $("confirm-no").addEventListener("click", () => { $("confirm").hidden = true; });
    $("confirm-yes").addEventListener("click", () => {
      $("confirm").hidden = true;
      run(clearList);
    });
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      $("token-form").hidden = true;
      const action = pending;
      pending = null;
      if (action) run(action);
    });
    $("token-cancel").addEventListener("click", () => {
      $("token-form").hidden = true;
      pending = null;
      status("", false);
    });
    $("filter").addEventListener("input", (e) => {
      filterText = e.target.value.trim();
      viewStale = true;
      schedule();
    });
    $("only-connected").addEventListener("change", (e) => {
      onlyConnected = e.target.checked;
      viewStale = true;
      schedule();
    });
    for (const b of document.querySelectorAll(".table-head button")) {
      b.addEventListener("click", () => setSort(b.dataset.sort));
    }
    $("scroller").addEventListener("scroll", schedule, { passive: true });
    window.addEventListener("resize", schedule);
    setInterval(schedule, 1000); // keep "last seen" ages current
    markSort();
  }

  wire();
  connect();
})();
