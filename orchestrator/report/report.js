/* comfysweep report: the X/Y/Z grid, synchronised playback, A/B wipe, summary, ratings.
 * A cell's output is a video (a live <video> while in view), an image (its poster, a scaled-down
 * copy) or an audio file (its waveform poster and a live <audio controls> on the same clock). 
 * User text (inputs, errors, keys) only ever goes in through textContent and attributes. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var CAP = D.cap || 12;
  var TOL = 1 / 32; // half a frame at 16 fps: drift beyond this is corrected
  var SEEK = 0.25; // drift beyond this seeks; below it the playback rate catches up
  var axes = D.axes;
  var axisAt = {};
  axes.forEach(function (a, i) { axisAt[a.name] = i; });
  var cells = D.cells;
  var byKey = new Map();
  cells.forEach(function (c) { byKey.set(c.k, c); });
  var $ = function (id) { return document.getElementById(id); };
  var grid = $("grid");
  var videos = grid.getElementsByClassName("live"); // the grid's players now: <video>, <audio>
  var view = { x: D.x, y: D.y, z: D.z, tab: null, filters: {}, ab: [], abOpen: false, summary: false };
  var clock = { playing: false, base: 0, t0: 0, duration: 0 };
  var durations = new Map(); // video src -> seconds, kept after its element is gone
  var visible = new Set(); // tiles in view
  var live = new Set(); // tiles holding a <video>
  var hovered = null;
  var stats = { maxLive: 0 };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // -- view state <-> URL hash ------------------------------------------------------------

  function readHash() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    view.x = D.x; view.y = D.y; view.z = D.z; view.tab = D.tab === undefined ? null : D.tab;
    view.filters = Object.assign({}, D.filters || {});
    ["x", "y", "z"].forEach(function (k) {
      if (!p.has(k)) return;
      var v = p.get(k);
      view[k] = v === "" || axisAt[v] === undefined ? null : v;
    });
    if (p.has("tab")) view.tab = p.get("tab");
    p.forEach(function (v, k) { // a value no job has (a link older than the sweep) is "all"
      var name = k.slice(2);
      if (k.indexOf("f.") === 0 && axisAt[name] !== undefined) {
        view.filters[name] = axes[axisAt[name]].labels.indexOf(v) >= 0 ? v : "";
      }
    });
    view.ab = (p.get("ab") || "").split(",").filter(function (k) { // only cells with a video
      return byKey.has(k) && playable(byKey.get(k)) && byKey.get(k).m !== "audio";
    }).slice(0, 2);
    view.abOpen = p.get("abv") === "1" && view.ab.length === 2;
    view.summary = p.get("summary") === "1";
    ["x", "y", "z"].forEach(function (k, i, all) { // one input on one axis only
      all.slice(i + 1).forEach(function (o) { if (view[o] && view[o] === view[k]) view[o] = null; });
    });
  }

  function writeHash() {
    var p = new URLSearchParams();
    p.set("x", view.x || ""); p.set("y", view.y || ""); p.set("z", view.z || "");
    if (view.z && view.tab !== null) p.set("tab", view.tab);
    Object.keys(view.filters).forEach(function (k) {
      if (onAxis(k) || view.filters[k] === "") return;
      p.set("f." + k, view.filters[k]);
    });
    if (view.ab.length) p.set("ab", view.ab.join(","));
    if (view.abOpen) p.set("abv", "1");
    if (view.summary) p.set("summary", "1");
    history.replaceState(null, "", "#" + p.toString());
  }

  function playable(c) { return !!c.f && c.m !== "image"; } // a still needs no player

  function onAxis(name) { return name === view.x || name === view.y || name === view.z; }

  // -- the controls -----------------------------------------------------------------------

  function fillAxisSelects() {
    ["x", "y", "z"].forEach(function (k) {
      var select = $("axis-" + k);
      select.textContent = "";
      select.appendChild(new Option("(none)", ""));
      axes.forEach(function (a) {
        select.appendChild(new Option(a.name + " (" + a.labels.length + ")", a.name));
      });
      select.value = view[k] || "";
    });
  }

  function chooseAxis(k, name) {
    var old = view[k];
    ["x", "y", "z"].forEach(function (o) { if (o !== k && name && view[o] === name) view[o] = old; });
    view[k] = name || null;
    if (k === "z") view.tab = null;
    update();
  }

  function fillFilters() {
    var box = $("filters");
    box.textContent = "";
    axes.forEach(function (a) {
      if (onAxis(a.name)) return;
      var label = el("label", "filter");
      label.appendChild(document.createTextNode(a.name + " "));
      var select = el("select");
      select.dataset.input = a.name;
      select.appendChild(new Option("all", ""));
      a.labels.forEach(function (l) { select.appendChild(new Option(l, l)); });
      select.value = view.filters[a.name] || "";
      select.addEventListener("change", function () {
        view.filters[a.name] = select.value;
        update();
      });
      label.appendChild(select);
      box.appendChild(label);
    });
  }

  function fillTabs() {
    var nav = $("tabs");
    nav.textContent = "";
    if (!view.z) return;
    var labels = axes[axisAt[view.z]].labels;
    if (view.tab === null || labels.indexOf(view.tab) < 0) view.tab = labels[0];
    labels.forEach(function (l) {
      var b = el("button", "tab", view.z + " = " + l);
      b.type = "button";
      b.title = b.textContent;
      b.dataset.value = l;
      b.setAttribute("aria-selected", String(l === view.tab));
      b.addEventListener("click", function () { view.tab = l; update(); });
      nav.appendChild(b);
    });
  }

  // -- the grid ---------------------------------------------------------------------------

  function shown() {
    var zi = view.z ? axisAt[view.z] : -1;
    var tab = zi >= 0 ? axes[zi].labels.indexOf(view.tab) : -1;
    var wanted = [];
    Object.keys(view.filters).forEach(function (k) {
      if (!view.filters[k] || onAxis(k)) return;
      wanted.push([axisAt[k], axes[axisAt[k]].labels.indexOf(view.filters[k])]);
    });
    return cells.filter(function (c) {
      if (zi >= 0 && c.v[zi] !== tab) return false;
      return wanted.every(function (w) { return c.v[w[0]] === w[1]; });
    });
  }

  function inputsOf(c) {
    var out = {};
    Object.keys(D.fixed).forEach(function (k) { out[k] = D.fixed[k]; });
    axes.forEach(function (a, i) { out[a.name] = a.labels[c.v[i]]; });
    return out;
  }

  function describe(c) {
    var ins = inputsOf(c);
    var lines = ["job " + c.k.slice(0, 12) + " · " + c.s];
    Object.keys(ins).forEach(function (k) { lines.push(k + ": " + ins[k]); });
    if (c.e) lines.push("error: " + c.e);
    if (c.r) lines.push("rating: " + c.r);
    if (c.o) lines.push("orphaned: no longer in the spec (kept, never submitted again)");
    return lines.join("\n");
  }

  function caption(c) {
    return axes.filter(function (a) { return !onAxis(a.name); }).map(function (a) {
      return a.name + "=" + a.labels[c.v[axisAt[a.name]]];
    }).join(" ");
  }

  var RATING = { up: "\u25B2 up", down: "\u25BC down", pick: "\u2605 pick" };

  function tile(c) {
    var t = el("div", "tile");
    t.dataset.key = c.k;
    t.dataset.state = c.s;
    if (c.m) t.dataset.kind = c.m;
    t.dataset.inputs = JSON.stringify(inputsOf(c));
    t.title = describe(c);
    if (view.ab.indexOf(c.k) >= 0) t.classList.add("picked");
    var media = el("div", "media");
    if (c.p) {
      var img = el("img", "poster");
      img.loading = "lazy";
      img.alt = "";
      img.src = c.p;
      media.appendChild(img);
    } else {
      media.appendChild(el("div", "noposter", c.f ? c.m || "video" : c.s));
    }
    if (c.s !== "done") media.appendChild(el("span", "state state-" + c.s, c.s));
    if (c.o) media.appendChild(el("span", "orphaned", "orphaned"));
    t.appendChild(media);
    if (c.e) t.appendChild(el("div", "error", c.e));
    var cap = caption(c);
    if (cap) t.appendChild(el("div", "caption", cap));
    var bar = el("div", "bar");
    if (c.f) {
      var a = el("a", "file", "file");
      a.href = c.f;
      a.target = "_blank";
      a.rel = "noopener";
      bar.appendChild(a);
    }
    if (playable(c) && c.m !== "audio") {
      var pick = el("button", "abpick", "A/B");
      pick.type = "button";
      bar.appendChild(pick);
    }
    if (D.served) {
      ["up", "down", "pick"].forEach(function (r) {
        var b = el("button", "rate rate-" + r, RATING[r]);
        b.type = "button";
        b.dataset.rating = r;
        b.setAttribute("aria-pressed", String(c.r === r));
        bar.appendChild(b);
      });
    } else if (c.r) {
      bar.appendChild(el("span", "rating rating-" + c.r, RATING[c.r] || c.r));
    }
    t.appendChild(bar);
    return t;
  }

  var observer = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      if (e.isIntersecting) visible.add(e.target); else visible.delete(e.target);
    });
    reconcile();
  }, { rootMargin: "100px" }) : null;

  function axisLabel(cls, text) { // a long value (a prompt) is cut to a few lines; hover: all
    var th = el("th", cls);
    th.title = text;
    th.appendChild(el("div", "label", text));
    return th;
  }

  function renderGrid() {
    live.forEach(drop);
    visible.clear();
    if (observer) observer.disconnect();
    grid.textContent = "";
    var xi = view.x ? axisAt[view.x] : -1;
    var yi = view.y ? axisAt[view.y] : -1;
    var xs = xi >= 0 ? axes[xi].labels : [""];
    var ys = yi >= 0 ? axes[yi].labels : [""];
    var slots = new Map();
    shown().forEach(function (c) {
      var at = (yi >= 0 ? c.v[yi] : 0) + "," + (xi >= 0 ? c.v[xi] : 0);
      if (!slots.has(at)) slots.set(at, []);
      slots.get(at).push(c);
    });
    var table = el("table", "xy");
    table.id = "table";
    var head = el("tr");
    head.appendChild(el("th", "corner", (view.y || "") + (view.x ? " \\ " + view.x : "")));
    xs.forEach(function (l) { head.appendChild(axisLabel("xlabel", view.x ? l : "")); });
    table.appendChild(el("thead")).appendChild(head);
    var body = table.appendChild(el("tbody"));
    ys.forEach(function (yl, r) {
      var tr = el("tr");
      tr.dataset.row = String(r);
      tr.appendChild(axisLabel("ylabel", view.y ? yl : ""));
      xs.forEach(function (xl, col) {
        var td = el("td", "cell");
        td.dataset.x = view.x ? xl : "";
        td.dataset.y = view.y ? yl : "";
        var here = slots.get(r + "," + col) || [];
        if (!here.length) td.appendChild(el("div", "empty", "no job"));
        if (here.length > 1) td.classList.add("stack");
        var box = td.appendChild(el("div", "tiles"));
        here.forEach(function (c) { box.appendChild(tile(c)); });
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    grid.appendChild(table);
    grid.querySelectorAll(".tile").forEach(function (t) {
      if (observer && playable(byKey.get(t.dataset.key))) observer.observe(t);
    });
  }

  // -- live videos: only in view, never more than CAP ------------------------------------

  function attach(t) {
    var c = byKey.get(t.dataset.key);
    if (!playable(c) || live.has(t)) return;
    var v = document.createElement(c.m === "audio" ? "audio" : "video");
    if (c.m === "audio") {
      v.controls = true; // heard, unlike the muted videos: its own volume and seek bar
      // Played from its own controls while the clock stands: on its own until paused.
      v.addEventListener("play", function () { if (!clock.playing) v.dataset.solo = "1"; });
      v.addEventListener("pause", function () { if (!clock.playing) delete v.dataset.solo; });
    } else {
      v.muted = true;
      v.defaultMuted = true;
      v.playsInline = true;
      v.setAttribute("playsinline", "");
      v.setAttribute("muted", "");
      if (c.p) v.poster = c.p;
    }
    v.preload = "auto";
    v.className = "live";
    v.addEventListener("loadedmetadata", function () {
      durations.set(c.f, v.duration);
      clock.duration = Math.max(clock.duration, v.duration || 0);
      sync(v, masterTime(), true);
    });
    v.src = c.f;
    t.querySelector(".media").appendChild(v);
    live.add(t);
    stats.maxLive = Math.max(stats.maxLive, videos.length);
  }

  function drop(t) {
    var v = t.querySelector(".live");
    if (v) {
      v.pause();
      v.removeAttribute("src");
      v.load();
      v.remove();
    }
    live.delete(t);
  }

  function reconcile() { // O(tiles in view), not O(tiles): called on every scroll step
    live.forEach(function (t) { if (!visible.has(t) && t !== hovered) drop(t); });
    visible.forEach(function (t) { if (live.size < CAP && !live.has(t)) attach(t); });
  }

  function makeLive(t) {
    if (live.has(t)) return;
    if (live.size >= CAP) {
      var victim = null;
      live.forEach(function (o) { if (!victim && !visible.has(o)) victim = o; });
      if (!victim) live.forEach(function (o) { if (!victim && o !== t) victim = o; });
      if (victim) drop(victim);
    }
    attach(t);
  }

  // -- the master clock -------------------------------------------------------------------

  function loop() { return $("loop").checked; }

  function masterTime() {
    if (!clock.playing) return clock.base;
    var t = clock.base + (performance.now() - clock.t0) / 1000;
    if (clock.duration > 0) {
      if (loop()) t = t % clock.duration;
      else if (t >= clock.duration) { // the end, without loop: everything stops there
        clock.base = clock.duration;
        clock.playing = false;
        paintPlaying();
        return clock.base;
      }
    }
    return t;
  }

  function setPlaying(on) {
    if (on === clock.playing) return;
    if (on) {
      if (!loop() && clock.duration && clock.base >= clock.duration - 0.01) clock.base = 0;
      clock.t0 = performance.now();
      clock.playing = true;
    } else {
      clock.base = masterTime();
      clock.playing = false;
    }
    paintPlaying();
  }

  function paintPlaying() {
    var on = clock.playing;
    $("play").textContent = on ? "Pause all" : "Play all";
    document.body.dataset.playing = String(on);
    allVideos().forEach(function (v) {
      delete v.dataset.solo;
      v.loop = loop();
      if (on) v.play().catch(function () {}); else v.pause();
    });
  }

  function allVideos() {
    var vs = Array.prototype.slice.call(videos);
    if (view.abOpen) vs.push($("ab-a"), $("ab-b"));
    return vs;
  }

  // A seek in flight is left to finish: seeking again restarts it, so on a slow machine, where
  // a seek takes longer than the drift SEEK allows, a video would seek forever and never play.
  // A playing video's seek aims as far ahead as its last seek took, to land in step.
  var seeks = new WeakMap(); // video -> {since: when its seek began, cost: seconds the last took}

  function seekTo(v, target, dur) {
    var s = seeks.get(v) || { since: 0, cost: 0 };
    var at = target + (clock.playing ? s.cost : 0);
    s.since = performance.now();
    seeks.set(v, s);
    v.currentTime = loop() ? at % dur : Math.min(at, dur - 0.001);
  }

  document.addEventListener("seeked", function (e) { // media events do not bubble: captured
    var s = seeks.get(e.target);
    if (!s || !s.since) return;
    s.cost = Math.min(2, (performance.now() - s.since) / 1000);
    s.since = 0;
  }, true);

  function sync(v, t, force) {
    var dur = v.duration;
    if (!dur || !isFinite(dur)) return;
    var target = loop() ? t % dur : Math.min(t, dur - 0.001);
    if (!clock.playing) {
      // A standing audio player keeps where its own seek bar put it, unless the clock moves.
      if (v.dataset.solo || (v.tagName === "AUDIO" && !force)) return;
      if (!v.paused) v.pause();
      if (force || (!v.seeking && Math.abs(v.currentTime - target) > TOL)) seekTo(v, target, dur);
      return;
    }
    if (v.loop !== loop()) v.loop = loop();
    if (v.seeking && !force) return;
    var d = target - v.currentTime;
    if (loop()) {
      if (d > dur / 2) d -= dur;
      else if (d < -dur / 2) d += dur;
    }
    if (force || Math.abs(d) > SEEK) { seekTo(v, target, dur); v.playbackRate = 1; }
    else if (Math.abs(d) > TOL) v.playbackRate = Math.min(1.5, Math.max(0.5, 1 + d * 2));
    else if (v.playbackRate !== 1) v.playbackRate = 1;
    if (v.paused && (!v.ended || loop())) v.play().catch(function () {});
  }

  var shownAt = null;
  var shownText = null;
  var shownWhen = 0;

  function tick() {
    var t = masterTime();
    allVideos().forEach(function (v) { sync(v, t, false); });
    // The time shown changes at most 8 times a second: each change is a layout, after which
    // the browser checks every observed cell against the viewport again.
    var now = performance.now();
    if (now - shownWhen > 125 || !clock.playing) {
      var at = clock.duration > 0 ? String(Math.round((t / clock.duration) * 1000)) : "0";
      if (at !== shownAt && document.activeElement !== $("scrub")) $("scrub").value = shownAt = at;
      var text = t.toFixed(1) + " s";
      if (text !== shownText) $("clock").textContent = shownText = text;
      shownWhen = now;
    }
    requestAnimationFrame(tick);
  }

  // -- A/B wipe ---------------------------------------------------------------------------

  function togglePick(key) {
    var i = view.ab.indexOf(key);
    if (i >= 0) view.ab.splice(i, 1);
    else { view.ab.push(key); if (view.ab.length > 2) view.ab.shift(); }
    grid.querySelectorAll(".tile").forEach(function (t) {
      t.classList.toggle("picked", view.ab.indexOf(t.dataset.key) >= 0);
    });
    updateAbButton();
    writeHash();
  }

  function updateAbButton() {
    var b = $("ab-open");
    b.disabled = view.ab.length !== 2;
    b.textContent = view.ab.length === 2 ? "A/B" : "A/B (pick " + (2 - view.ab.length) + ")";
  }

  function label(c) {
    return [view.x, view.y, view.z].filter(Boolean).map(function (n) {
      return n + "=" + axes[axisAt[n]].labels[c.v[axisAt[n]]];
    }).concat([caption(c)]).filter(Boolean).join(" ");
  }

  function showAb() {
    var box = $("ab");
    var a = $("ab-a");
    var b = $("ab-b");
    if (!view.abOpen) {
      box.hidden = true;
      [a, b].forEach(function (v) { v.pause(); v.removeAttribute("src"); v.load(); });
      return;
    }
    var ca = byKey.get(view.ab[0]);
    var cb = byKey.get(view.ab[1]);
    [[a, ca], [b, cb]].forEach(function (pair) {
      var v = pair[0];
      if (v.getAttribute("src") !== pair[1].f) {
        v.src = pair[1].f;
        if (pair[1].p) v.poster = pair[1].p;
      }
      v.onloadedmetadata = function () {
        clock.duration = Math.max(clock.duration, v.duration || 0);
        sync(v, masterTime(), true);
      };
    });
    $("ab-label-a").textContent = $("ab-label-a").title = "A: " + label(ca);
    $("ab-label-b").textContent = $("ab-label-b").title = "B: " + label(cb);
    box.hidden = false;
    wipe();
  }

  function wipe() {
    var at = Number($("ab-slider").value);
    $("ab-a").style.clipPath = "inset(0 " + (100 - at) + "% 0 0)";
    $("ab-line").style.left = at + "%";
  }

  // -- summary ----------------------------------------------------------------------------

  function money(v) { return v === null || v === undefined ? "none" : "$" + Number(v).toFixed(2); }

  function renderSummary() {
    var box = $("summary");
    box.hidden = !view.summary;
    if (!view.summary || box.dataset.done) return;
    box.dataset.done = "1";
    var s = D.summary;
    var states = el("div", "panel");
    states.appendChild(el("h2", null, "Jobs (" + cells.length + ")"));
    var table = el("table", "counts");
    Object.keys(s.counts).forEach(function (k) {
      var tr = el("tr");
      tr.dataset.state = k;
      tr.appendChild(el("td", "state-" + k, k));
      tr.appendChild(el("td", "n", s.counts[k]));
      table.appendChild(tr);
    });
    states.appendChild(table);
    box.appendChild(states);
    var spend = el("div", "panel");
    spend.appendChild(el("h2", null, "Spend"));
    spend.appendChild(el("p", "spent", "spent " + money(s.ledger.spent)));
    spend.appendChild(el("p", "reserved", "reserved " + money(s.ledger.reserved)));
    spend.appendChild(el("p", "cap", "cap " + money(s.ledger.cap)));
    box.appendChild(spend);
    var times = el("div", "panel");
    times.appendChild(el("h2", null, "Durations"));
    times.appendChild(histogram(s.histogram));
    box.appendChild(times);
    var errs = el("div", "panel");
    errs.appendChild(el("h2", null, "Top errors"));
    if (!s.errors.length) errs.appendChild(el("p", null, "none"));
    var list = el("ol", "errors");
    s.errors.forEach(function (e) { list.appendChild(el("li", null, e[1] + " \u00d7 " + e[0])); });
    errs.appendChild(list);
    box.appendChild(errs);
  }

  function histogram(h) {
    var NS = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(NS, "svg");
    var w = 240, hgt = 80;
    svg.setAttribute("viewBox", "0 0 " + w + " " + (hgt + 14));
    svg.setAttribute("class", "histogram");
    var top = Math.max.apply(null, h.bins.concat([1]));
    var bw = h.bins.length ? w / h.bins.length : w;
    h.bins.forEach(function (n, i) {
      var r = document.createElementNS(NS, "rect");
      var bh = (n / top) * hgt;
      r.setAttribute("x", String(i * bw + 1));
      r.setAttribute("y", String(hgt - bh));
      r.setAttribute("width", String(Math.max(1, bw - 2)));
      r.setAttribute("height", String(bh));
      var tip = document.createElementNS(NS, "title");
      var lo = (h.max * i) / h.bins.length, hi = (h.max * (i + 1)) / h.bins.length;
      tip.textContent = n + " job(s), " + lo.toFixed(1) + "–" + hi.toFixed(1) + " s";
      r.appendChild(tip);
      svg.appendChild(r);
    });
    var axis = document.createElementNS(NS, "text");
    axis.setAttribute("x", "0");
    axis.setAttribute("y", String(hgt + 12));
    axis.textContent = h.bins.length ? "0 – " + h.max.toFixed(1) + " s" : "no finished jobs";
    svg.appendChild(axis);
    return svg;
  }

  // -- ratings (served page only) ---------------------------------------------------------

  function rowKeys(t) {
    var tr = t.closest("tr");
    return Array.prototype.map.call(tr.querySelectorAll(".tile"), function (o) { return o.dataset.key; });
  }

  function rate(t, r) {
    var c = byKey.get(t.dataset.key);
    var rating = c.r === r ? null : r;
    var row = rating === "pick" ? rowKeys(t) : [];
    fetch("api/rating", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ key: c.k, rating: rating, row: row }),
    }).then(function (resp) {
      if (!resp.ok) return resp.text().then(function (m) { throw new Error(m); });
      if (rating === "pick") {
        row.forEach(function (k) { var o = byKey.get(k); if (o.r === "pick") o.r = null; });
      }
      c.r = rating;
      var tiles = rating === "pick" ? t.closest("tr").querySelectorAll(".tile") : [t];
      Array.prototype.forEach.call(tiles, function (o) {
        var oc = byKey.get(o.dataset.key);
        o.querySelectorAll(".rate").forEach(function (b) {
          b.setAttribute("aria-pressed", String(oc.r === b.dataset.rating));
        });
        o.title = describe(oc);
      });
      document.body.dataset.rated = c.k + ":" + (rating || "");
    }).catch(function (e) {
      document.body.dataset.rateError = String(e.message || e);
      t.classList.add("rate-failed");
    });
  }

  // -- events -----------------------------------------------------------------------------

  grid.addEventListener("click", function (e) {
    var t = e.target.closest(".tile");
    if (!t) return;
    if (e.target.closest(".abpick")) { togglePick(t.dataset.key); return; }
    var r = e.target.closest(".rate");
    if (r) { rate(t, r.dataset.rating); return; }
    if (e.target.closest("a")) return;
    if (e.target.closest(".media")) {
      if (e.target.closest("audio")) return; // its own controls
      makeLive(t);
      var v = t.querySelector(".live");
      if (!v || clock.playing) return;
      if (v.paused) { v.dataset.solo = "1"; v.loop = true; v.play().catch(function () {}); }
      else { delete v.dataset.solo; v.pause(); }
    }
  });

  grid.addEventListener("mouseover", function (e) {
    var t = e.target.closest(".tile");
    if (!t || t === hovered) return;
    hovered = t;
    var hc = byKey.get(t.dataset.key);
    if (clock.playing || !playable(hc)) return;
    makeLive(t);
    if (hc.m === "audio") return; // a sound starts on a click, never on a hover
    var v = t.querySelector(".live");
    if (v) { v.dataset.solo = "1"; v.loop = true; v.play().catch(function () {}); }
  });

  grid.addEventListener("mouseout", function (e) {
    var t = e.target.closest(".tile");
    if (!t || (e.relatedTarget && t.contains(e.relatedTarget))) return;
    hovered = null;
    var v = t.querySelector(".live");
    if (v && v.dataset.solo && !clock.playing) { delete v.dataset.solo; v.pause(); }
    if (!visible.has(t)) reconcile();
  });

  ["x", "y", "z"].forEach(function (k) {
    $("axis-" + k).addEventListener("change", function (e) { chooseAxis(k, e.target.value); });
  });
  $("play").addEventListener("click", function () { setPlaying(!clock.playing); });
  $("scrub").addEventListener("input", function () {
    clock.base = (Number($("scrub").value) / 1000) * (clock.duration || 0);
    clock.t0 = performance.now();
    allVideos().forEach(function (v) { sync(v, clock.base, true); });
  });
  $("ab-open").addEventListener("click", function () {
    view.abOpen = view.ab.length === 2;
    showAb();
    writeHash();
  });
  $("ab-close").addEventListener("click", function () { view.abOpen = false; showAb(); writeHash(); });
  $("ab-slider").addEventListener("input", wipe);
  $("summary-toggle").addEventListener("click", function () {
    view.summary = !view.summary;
    renderSummary();
    writeHash();
  });
  window.addEventListener("hashchange", function () { readHash(); render(); });
  $("size").addEventListener("input", function () {
    document.documentElement.style.setProperty("--tile", $("size").value + "px");
  });
  document.addEventListener("keydown", function (e) { // space: play or pause all
    if (e.key !== " " || e.target.closest("input, select, button, a")) return;
    e.preventDefault();
    setPlaying(!clock.playing);
  });

  function update() { writeHash(); render(); }

  function render() {
    fillAxisSelects();
    fillFilters();
    fillTabs();
    renderGrid();
    updateAbButton();
    showAb();
    renderSummary();
    writeHash();
  }

  $("title").textContent = D.name;
  document.title = D.name + " \u00b7 comfysweep report";
  var fixed = $("fixed");
  Object.keys(D.fixed).forEach(function (k) {
    if (k === "repeat") return;
    var s = el("span", "fixed-input");
    s.appendChild(el("b", null, k));
    s.appendChild(document.createTextNode(" " + D.fixed[k]));
    fixed.appendChild(s);
  });
  document.body.classList.toggle("served", !!D.served);
  document.body.dataset.playing = "false";
  readHash();
  render();
  requestAnimationFrame(tick);

  window.comfysweepReport = {
    cap: CAP,
    view: view,
    clock: clock,
    stats: stats,
    liveCount: function () { return grid.querySelectorAll("video, audio").length; },
    masterTime: masterTime,
    setPlaying: setPlaying,
  };
})();
