// The status page's stylesheet and script, kept as strings in a module so they travel inside the bundled
// package like any code: nothing is read from disk at run time and nothing comes from a CDN.
//
// The script is plain ES2017 (no build step): it opens /events (Server-Sent Events), copies each tick's
// cells into the elements with the same data-k, appends the tick's rates to its 10-minute history and
// redraws the charts as SVG paths; operator buttons post with fetch and show the command's reply.

export const PAGE_CSS = `
:root { --up:#1a7f37; --down:#cf222e; --dis:#6e7781; --drn:#9a6700; --ej:#bc4c00; --c:#0969da; --s:#8250df; --r:#1a7f37;
  --bg:#f6f8fa; --card:#fff; --line:#d0d7de; --text:#1f2328; --muted:#656d76; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--text); }
header.top { display: flex; gap: 1.5em; align-items: baseline; padding: .6em 1.2em; background: #24292f; color: #f6f8fa; }
header.top h1 { margin: 0; font-size: 1.3em; }
header.top .who { margin-left: auto; }
header.top a, header.top button { color: #f6f8fa; }
main { padding: 1em 1.2em; display: grid; gap: 1.2em; }
section.listener { background: var(--card); border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
section.listener > header { display: grid; grid-template-columns: minmax(20em, 1fr) minmax(18em, 2fr); gap: .4em 1.5em; padding: .8em 1em; border-bottom: 1px solid var(--line); }
section.listener h2 { grid-column: 1 / -1; margin: 0; font-size: 1.15em; }
h2 small, td small, dd small { color: var(--muted); font-weight: normal; }
dl.stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(9em, 1fr)); gap: .3em 1em; margin: 0; }
dl.stats dt { color: var(--muted); font-size: .8em; }
dl.stats dd { margin: 0; font-variant-numeric: tabular-nums; font-size: 1.1em; }
figure.lchart { margin: 0; }
figcaption { color: var(--muted); font-size: .8em; display: flex; flex-wrap: wrap; gap: .3em 1em; }
.legend i { display: inline-block; width: .9em; height: .25em; vertical-align: middle; margin: 0 .2em 0 .6em; }
.legend i.c { background: var(--c); } .legend i.s { background: var(--s); } .legend i.r { background: var(--r); }
svg.chart { display: block; width: 12em; height: 2.2em; background: var(--bg); border-radius: 3px; }
svg.chart.big { width: 100%; height: 4.5em; }
svg.chart path { fill: none; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
svg.chart path.c { stroke: var(--c); } svg.chart path.s { stroke: var(--s); opacity: .7; } svg.chart path.r { stroke: var(--r); opacity: .7; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: .35em .6em; text-align: left; border-bottom: 1px solid var(--line); vertical-align: middle; white-space: nowrap; }
thead th { font-size: .8em; color: var(--muted); font-weight: 600; background: var(--bg); }
tr.grp th { font-weight: 600; font-size: .85em; background: #eaeef2; }
td.n { text-align: right; }
td.num { color: var(--muted); }
.st { display: inline-block; min-width: 4.5em; text-align: center; padding: .1em .5em; border-radius: 1em; color: #fff; font-weight: 600; font-size: .85em; }
.st.up { background: var(--up); } .st.down { background: var(--down); } .st.dis { background: var(--dis); }
.st.drn { background: var(--drn); } .st.ej { background: var(--ej); }
.ok { color: var(--up); } .bad { color: var(--down); } .warn { color: var(--drn); }
meter { width: 5em; height: .8em; vertical-align: middle; }
form.act { display: flex; gap: .3em; margin: 0; }
form.inline { display: inline; }
button { font: inherit; font-size: .85em; padding: .15em .6em; border: 1px solid var(--line); border-radius: 5px; background: var(--card); color: var(--text); cursor: pointer; }
header.top button { background: transparent; border-color: #57606a; }
button.b-disable { border-color: var(--dis); } button.b-drain { border-color: var(--drn); } button.b-enable { border-color: var(--up); }
output#result { display: block; margin: .6em 1.2em 0; font-family: ui-monospace, monospace; white-space: pre-wrap; }
output#result:empty { display: none; }
output#result.ok { color: var(--up); } output#result.bad { color: var(--down); }
footer { padding: .5em 1.2em 1.5em; color: var(--muted); }
main.msg { max-width: 40em; margin: 2em auto; }
`;

export const PAGE_JS = `(function () {
  'use strict';
  var WINDOW_MS = 600000;
  var cells = new Map();
  document.querySelectorAll('[data-k]').forEach(function (el) { cells.set(el.getAttribute('data-k'), el); });
  var shape = document.body.getAttribute('data-shape');
  var hist = { t: [], series: {} };
  var live = document.getElementById('live');
  var result = document.getElementById('result');

  function apply(c) {
    Object.keys(c).forEach(function (k) {
      var el = cells.get(k);
      if (!el) return;
      var v = c[k];
      if (v.text !== undefined && el.textContent !== v.text) el.textContent = v.text;
      if (v.cls !== undefined && el.getAttribute('class') !== v.cls) el.setAttribute('class', v.cls);
      if (v.title !== undefined) el.title = v.title;
      if (v.max !== undefined) el.max = v.max;
      if (v.value !== undefined) el.value = v.value;
    });
  }

  function trim() {
    var cut = 0;
    var oldest = hist.t.length ? hist.t[hist.t.length - 1] - WINDOW_MS : 0;
    while (cut < hist.t.length && hist.t[cut] <= oldest) cut++;
    if (cut === 0) return;
    hist.t = hist.t.slice(cut);
    Object.keys(hist.series).forEach(function (id) {
      hist.series[id] = hist.series[id].map(function (a) { return a.slice(cut); });
    });
  }

  function append(sample) {
    var n = hist.t.length;
    hist.t.push(sample.t);
    Object.keys(sample.series).forEach(function (id) {
      var s = hist.series[id];
      if (!s) {
        s = [[], [], []];
        for (var i = 0; i < n; i++) { s[0].push(null); s[1].push(null); s[2].push(null); }
        hist.series[id] = s;
      }
      for (var j = 0; j < 3; j++) s[j].push(sample.series[id][j]);
    });
    Object.keys(hist.series).forEach(function (id) {
      if (!sample.series[id]) delete hist.series[id];
    });
    trim();
  }

  function path(t, values, max, end, span) {
    var d = '';
    var pen = false;
    for (var i = 0; i < t.length; i++) {
      var v = values[i];
      if (v === null || v === undefined) { pen = false; continue; }
      var x = (600 - ((end - t[i]) / span) * 600).toFixed(1);
      var y = (38 - (max > 0 ? v / max : 0) * 36).toFixed(1);
      d += (pen ? 'L' : 'M') + x + ' ' + y;
      pen = true;
    }
    return d;
  }

  function peak(values) {
    var m = 0;
    for (var i = 0; i < values.length; i++) if (values[i] !== null && values[i] > m) m = values[i];
    return m;
  }

  function human(n) {
    var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(Math.round(n))) + ' ' + u[i];
  }

  function draw() {
    var end = hist.t.length ? hist.t[hist.t.length - 1] : 0;
    // The x axis spans what is held, at least a minute: a young page's charts fill their width sooner.
    var span = Math.min(WINDOW_MS, Math.max(60000, hist.t.length ? end - hist.t[0] : 0));
    document.querySelectorAll('svg[data-series]').forEach(function (svg) {
      var s = hist.series[svg.getAttribute('data-series')];
      if (!s) return;
      var cmax = peak(s[0]);
      var bmax = Math.max(peak(s[1]), peak(s[2]));
      var paths = svg.querySelectorAll('path');
      paths[0].setAttribute('d', path(hist.t, s[1], bmax, end, span));
      paths[1].setAttribute('d', path(hist.t, s[2], bmax, end, span));
      paths[2].setAttribute('d', path(hist.t, s[0], cmax, end, span));
      var points = 0;
      for (var i = 0; i < s[0].length; i++) if (s[0][i] !== null) points++;
      svg.setAttribute('data-points', String(points));
      svg.querySelector('title').textContent = 'last ' + Math.round(span / 60000) + ' min, peaks: ' + (Math.round(cmax * 10) / 10) + ' conn/s, ' + human(bmax) + '/s';
    });
  }

  var reloadedAt = Number(sessionStorage.getItem('lb-reload') || 0);
  function reshaped(s) {
    if (s === shape) return false;
    // Backends or listeners were added or removed: the server draws the new rows (and their buttons).
    if (Date.now() - reloadedAt > 3000) {
      sessionStorage.setItem('lb-reload', String(Date.now()));
      location.reload();
    }
    return true;
  }

  if (window.EventSource) {
    var es = new EventSource('/events');
    es.addEventListener('init', function (e) {
      var d = JSON.parse(e.data);
      if (reshaped(d.shape)) return;
      hist = d.history;
      apply(d.cells);
      draw();
      live.textContent = 'live';
    });
    es.addEventListener('tick', function (e) {
      var d = JSON.parse(e.data);
      if (reshaped(d.shape)) return;
      append(d.sample);
      apply(d.cells);
      draw();
      live.textContent = 'live · ' + new Date(d.sample.t).toLocaleTimeString();
    });
    es.onerror = function () { live.textContent = 'disconnected, retrying'; };
  }

  document.addEventListener('submit', function (ev) {
    var form = ev.target;
    if (!form.classList || !form.classList.contains('act')) return;
    ev.preventDefault();
    var body = new URLSearchParams(new FormData(form, ev.submitter));
    var buttons = form.querySelectorAll('button');
    buttons.forEach(function (b) { b.disabled = true; });
    fetch(form.action, { method: 'POST', body: body, headers: { Accept: 'text/plain' }, credentials: 'same-origin' })
      .then(function (r) { return r.text().then(function (t) { return { ok: r.ok, text: t }; }); })
      .catch(function (err) { return { ok: false, text: 'error: ' + err.message }; })
      .then(function (r) {
        result.textContent = r.text.replace(/\\n$/, '');
        result.className = r.ok ? 'ok' : 'bad';
        buttons.forEach(function (b) { b.disabled = false; });
      });
  });
})();
`;
