// The status page's HTML, rendered on the server from one Snapshot: complete as a plain page (JavaScript
// off), and the same cells, by the same code, as the live updates the page's script applies each second.
//
// Every value that changes lives in an element with a `data-k` key; `pageCells()` computes those values
// once per tick for every viewer, and the script copies them into place. The page's set of rows (its
// "shape") changes only when listeners or backends are added or removed; then the script reloads the page.

import { formatHostPort } from '../config/values.ts';
import { backendSeries, listenerSeries, type History } from '../stats/history.ts';
import { formatUptime } from '../stats/render.ts';
import type { BackendSnap, ListenerSnap, Snapshot } from '../stats/snapshot.ts';
import { backendName } from './metrics.ts';

export interface Cell {
  text?: string;
  cls?: string;
  title?: string;
  /** For <meter> elements. */
  value?: number;
  max?: number;
}
export type Cells = Record<string, Cell>;

export interface PageAccess {
  /** The access level this viewer has ('read' shows no buttons). */
  level: string;
  /** Buttons are drawn (level above read). */
  buttons: boolean;
  /** A login would raise the level (a token_file is set and this viewer has not given the token). */
  canLogIn: boolean;
  loggedIn: boolean;
  csrf: string;
}

export const ACTIONS = ['enable', 'disable', 'drain'] as const;
export type Action = (typeof ACTIONS)[number];

const ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export const esc = (s: string | number): string => String(s).replace(/[&<>"']/g, (c) => ESC[c]!);

/** Exact, grouped by thousands with narrow spaces: the page shows the same number as `show stat`. */
export function fmtInt(n: number): string {
  return Math.trunc(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, '\u202f');
}

export function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[u]}`;
}

export function fmtRate(perSec: number, unit: string): string {
  if (unit === 'B') return `${fmtBytes(Math.round(perSec))}/s`;
  return `${perSec < 10 ? perSec.toFixed(1) : Math.round(perSec)} ${unit}/s`;
}

export function fmtAgo(sec: number): string {
  if (sec < 60) return `${sec}s`;
  if (sec < 3600) return `${Math.floor(sec / 60)}m${String(sec % 60).padStart(2, '0')}s`;
  if (sec < 86400) return `${Math.floor(sec / 3600)}h${String(Math.floor((sec % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(sec / 86400)}d${Math.floor((sec % 86400) / 3600)}h`;
}

/** The state an operator reads: show's status, with a passive ejection told apart from a failed check. */
export function stateOf(b: BackendSnap): { label: 'UP' | 'DOWN' | 'EJECTED' | 'DIS' | 'DRN'; cls: string } {
  switch (b.status) {
    case 'ENA':
      return { label: 'UP', cls: 'st up' };
    case 'DIS':
      return { label: 'DIS', cls: 'st dis' };
    case 'DRN':
      return { label: 'DRN', cls: 'st drn' };
    default:
      return b.downReason.startsWith('ejected') ? { label: 'EJECTED', cls: 'st ej' } : { label: 'DOWN', cls: 'st down' };
  }
}

const rowId = (l: ListenerSnap, g: number, b: BackendSnap): string => backendSeries(l.name, g, b.entry.key);

/** The rows the page has: when this changes, a live page reloads instead of patching cells. */
export function pageShape(snap: Snapshot): string {
  return snap.listeners
    .map((l) => [l.name, ...l.groups.map((g) => g.backends.map((b) => rowId(l, g.index, b)).join('\u0001'))].join('\u0002'))
    .join('\u0003');
}

function rateText(h: History, id: string): string {
  const r = h.latest(id);
  if (!r) return '–';
  return `${fmtRate(r.conns, 'conn')} · ${fmtRate(r.sent, 'B')} in · ${fmtRate(r.rcvd, 'B')} out`;
}

/** Every live value of the page, keyed as in its `data-k` attributes. */
export function pageCells(snap: Snapshot, history: History): Cells {
  const c: Cells = {};
  c['uptime'] = { text: formatUptime(snap.uptimeSec) };
  for (const l of snap.listeners) {
    const L = listenerSeries(l.name);
    c[`${L}|cur`] = { text: fmtInt(l.cur) };
    c[`${L}|max`] = { text: fmtInt(l.max) };
    c[`${L}|total`] = { text: fmtInt(l.total) };
    c[`${L}|nob`] = { text: fmtInt(l.noBackend), cls: l.noBackend > 0 ? 'warn' : '' };
    c[`${L}|sent`] = { text: fmtInt(l.sent), title: fmtBytes(l.sent) };
    c[`${L}|rcvd`] = { text: fmtInt(l.rcvd), title: fmtBytes(l.rcvd) };
    c[`${L}|rate`] = { text: rateText(history, L) };
    if (l.queue) {
      const q = l.queue;
      c[`${L}|queue`] = { text: `${fmtInt(q.cur)} / ${fmtInt(q.limit)}`, cls: q.cur > 0 ? 'warn' : '' };
      c[`${L}|qinfo`] = { text: `peak ${fmtInt(q.max)} · timeouts ${fmtInt(q.timeouts)} · left ${fmtInt(q.abandoned)} · full ${fmtInt(q.rejected)}` };
    }
    for (const g of l.groups) {
      c[`G ${l.name} ${g.index}|up`] = { text: `${g.up}/${g.backends.length} up`, cls: g.up === 0 ? 'bad' : '' };
      for (const b of g.backends) {
        const R = rowId(l, g.index, b);
        const st = stateOf(b);
        const maxc = b.entry.maxc;
        c[`${R}|state`] = { text: st.label, cls: st.cls, title: b.downReason || 'taking connections' };
        c[`${R}|cur`] = { text: fmtInt(b.cur) };
        c[`${R}|bar`] = { value: b.cur, max: Math.max(maxc || b.max, 1) };
        c[`${R}|peak`] = { text: `peak ${fmtInt(b.max)}` };
        c[`${R}|total`] = { text: fmtInt(b.total), title: `${fmtInt(b.attempts)} times chosen` };
        c[`${R}|fail`] = { text: fmtInt(b.failures), cls: b.failures > 0 ? 'warn' : '' };
        c[`${R}|sent`] = { text: fmtInt(b.sent), title: fmtBytes(b.sent) };
        c[`${R}|rcvd`] = { text: fmtInt(b.rcvd), title: fmtBytes(b.rcvd) };
        const ck = b.check;
        c[`${R}|check`] = ck
          ? { text: `${ck.status} ${ck.durationMs}ms`, cls: /OK$/.test(ck.status) ? 'ok' : ck.status === 'INI' ? '' : 'bad', title: `failed ${ck.failed}, downs ${ck.downs}, rise ${ck.rise}, fall ${ck.fall}` }
          : { text: '–', cls: '', title: 'no health checks' };
        c[`${R}|chg`] = { text: fmtAgo(b.lastChangeSec) };
        c[`${R}|rate`] = { text: rateText(history, R) };
      }
    }
  }
  return c;
}

function cellAttrs(c: Cells, k: string): string {
  const v = c[k] ?? {};
  let a = ` data-k="${esc(k)}"`;
  if (v.cls) a += ` class="${esc(v.cls)}"`;
  if (v.title) a += ` title="${esc(v.title)}"`;
  return a;
}
const cell = (c: Cells, k: string, tag = 'span'): string => `<${tag}${cellAttrs(c, k)}>${esc(c[k]?.text ?? '')}</${tag}>`;

function chart(id: string, big = false): string {
  return (
    `<svg class="chart${big ? ' big' : ''}" data-series="${esc(id)}" viewBox="0 0 600 40" preserveAspectRatio="none" role="img" aria-label="rates over the last 10 minutes">` +
    '<path class="s"/><path class="r"/><path class="c"/><title>collecting samples</title></svg>'
  );
}

function actions(l: ListenerSnap, g: number, b: BackendSnap, access: PageAccess): string {
  if (!access.buttons) return '';
  const hidden = (n: string, v: string | number): string => `<input type="hidden" name="${n}" value="${esc(v)}">`;
  const buttons = ACTIONS.map((a) => `<button type="submit" name="cmd" value="${a}" class="b-${a}">${a}</button>`).join('');
  return (
    `<td class="act"><form class="act" method="post" action="/action">${hidden('csrf', access.csrf)}${hidden('listener', l.name)}` +
    `${hidden('group', g)}${hidden('backend', b.index)}${buttons}</form></td>`
  );
}

function listenerSection(l: ListenerSnap, c: Cells, access: PageAccess): string {
  const L = listenerSeries(l.name);
  const stat = (label: string, k: string): string => `<div><dt>${label}</dt><dd>${cell(c, `${L}|${k}`)}</dd></div>`;
  const queue = l.queue ? `<div><dt>queue</dt><dd>${cell(c, `${L}|queue`)} <small>${cell(c, `${L}|qinfo`)}</small></dd></div>` : '';
  const cols = access.buttons ? 12 : 11;
  const rows = l.groups
    .map((g) => {
      const head =
        `<tr class="grp"><th colspan="${cols}">group ${g.index} · ${esc(g.policy)} · ` +
        `${cell(c, `G ${l.name} ${g.index}|up`)}${g.index > 0 ? ' · used when the groups before it have nothing usable' : ''}</th></tr>`;
      const body = g.backends
        .map((b) => {
          const R = rowId(l, g.index, b);
          const addr = formatHostPort(b.entry.address, b.entry.port);
          const name = backendName(b);
          const bar = c[`${R}|bar`]!;
          return (
            `<tr data-row="${esc(R)}"><td class="num">${g.index}.${b.index}</td>` +
            `<td class="name">${esc(name)}${name !== addr ? `<br><small>${esc(addr)}</small>` : ''}</td>` +
            `<td>${cell(c, `${R}|state`)}</td>` +
            `<td class="conns">${cell(c, `${R}|cur`)} / ${b.entry.maxc ? fmtInt(b.entry.maxc) : '∞'} ` +
            `<meter data-k="${esc(`${R}|bar`)}" min="0" max="${bar.max}" value="${bar.value}"></meter><br><small>${cell(c, `${R}|peak`)}</small></td>` +
            `<td class="n">${cell(c, `${R}|total`)}</td><td class="n">${cell(c, `${R}|fail`)}</td>` +
            `<td class="n">${cell(c, `${R}|sent`)}</td><td class="n">${cell(c, `${R}|rcvd`)}</td>` +
            `<td>${cell(c, `${R}|check`)}</td><td class="n">${cell(c, `${R}|chg`)}</td>` +
            `<td class="rate">${chart(R)}<br><small>${cell(c, `${R}|rate`)}</small></td>${actions(l, g.index, b, access)}</tr>`
          );
        })
        .join('');
      return head + body;
    })
    .join('');
  return (
    `<section class="listener" data-listener="${esc(l.name)}"><header><h2>${esc(l.name)} <small>${esc(l.address)}</small></h2>` +
    `<dl class="stats">${stat('current', 'cur')}${stat('peak', 'max')}${stat('total', 'total')}${stat('no backend', 'nob')}` +
    `${stat('bytes in', 'sent')}${stat('bytes out', 'rcvd')}${queue}</dl>` +
    `<figure class="lchart">${chart(L, true)}<figcaption>${cell(c, `${L}|rate`)}` +
    `<span class="legend"><i class="c"></i>connections/s <i class="s"></i>bytes/s in <i class="r"></i>bytes/s out (in: client → backend) · up to 10 minutes</span></figcaption></figure></header>` +
    `<div class="scroll"><table><thead><tr><th>#</th><th>backend</th><th>state</th><th>connections</th><th>total</th><th>failed</th>` +
    `<th>bytes in</th><th>bytes out</th><th>check</th><th>changed</th><th>rates</th>${access.buttons ? '<th>operator</th>' : ''}</tr></thead>` +
    `<tbody>${rows}</tbody></table></div></section>`
  );
}

function who(access: PageAccess): string {
  if (access.loggedIn) {
    return `level ${esc(access.level)} · <form class="inline" method="post" action="/logout"><input type="hidden" name="csrf" value="${esc(access.csrf)}"><button type="submit">log out</button></form>`;
  }
  return `level ${esc(access.level)}${access.canLogIn ? ' · <a href="/login">log in</a>' : ''}`;
}

export function renderPage(snap: Snapshot, history: History, access: PageAccess): string {
  const c = pageCells(snap, history);
  return (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">' +
    `<title>lb status</title><link rel="stylesheet" href="/page.css"></head><body data-shape="${esc(pageShape(snap))}">` +
    `<header class="top"><h1>lb</h1><span>${esc(snap.version)} · pid ${snap.pid} · up ${cell(c, 'uptime')}</span>` +
    `<span class="who">${who(access)}</span></header>` +
    '<output id="result" aria-live="polite"></output>' +
    `<main>${snap.listeners.map((l) => listenerSection(l, c, access)).join('')}</main>` +
    '<footer><a href="/metrics">/metrics</a> · <a href="/stats.json">/stats.json</a> · <a href="/stats.csv">/stats.csv</a> · ' +
    '<a href="/healthz">/healthz</a> · <span id="live">static page (reload for new numbers)</span></footer>' +
    '<script src="/page.js" defer></script></body></html>'
  );
}

/** The answer to a form posted without JavaScript: the command's reply, and the way back. */
export function renderResult(text: string, ok: boolean): string {
  return (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="3;url=/">' +
    `<title>lb: ${ok ? 'done' : 'refused'}</title><link rel="stylesheet" href="/page.css"></head><body>` +
    `<main class="msg"><pre class="${ok ? 'ok' : 'bad'}">${esc(text)}</pre><p><a href="/">back to the status page</a></p></main></body></html>`
  );
}

export function renderLogin(message: string): string {
  return (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lb: log in</title><link rel="stylesheet" href="/page.css"></head><body>' +
    '<main class="msg"><h1>lb</h1><form method="post" action="/login"><label>control token ' +
    '<input type="password" name="token" autocomplete="current-password" required autofocus></label> <button type="submit">log in</button></form>' +
    `${message ? `<p class="bad">${esc(message)}</p>` : ''}<p><a href="/">status page</a></p></main></body></html>`
  );
}
