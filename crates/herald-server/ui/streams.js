// Streams: the list with a search by name, and one stream's events.

import * as api from './api.js';
import { button, h, link, notice, replace, route, shortId, table, time } from './dom.js';

/** The name of a stream in a list answer (a string or an object). */
function streamName(item) {
  return typeof item === 'string' ? item : item.name ?? item.stream ?? item.id;
}

/** `#/streams?q=`: every stream, filtered by a part of its name. */
export async function renderList(main, query) {
  const search = query.get('q') ?? '';
  const answer = await api.get('/api/streams', { q: search || null });
  const all = api.items(answer, 'streams');
  const input = h('input', {
    type: 'search', id: 'stream-search', placeholder: 'Search by name', value: search,
    'aria-label': 'Search streams by name', autocomplete: 'off',
  });
  const count = h('p', { class: 'muted', id: 'stream-count' });
  const body = h('tbody');
  const draw = () => {
    const needle = input.value.trim().toLowerCase();
    const shown = all.filter((s) => String(streamName(s)).toLowerCase().includes(needle));
    count.textContent = `${shown.length} of ${all.length} streams`;
    replace(body, shown.map((s) => {
      const name = streamName(s);
      return h('tr', {},
        h('td', {}, link(name, 'streams', name)),
        h('td', { class: 'num' }, s.version ?? s.events ?? s.count ?? ''),
        h('td', {}, time(s.last_recorded_at ?? s.updated_at ?? s.recorded_at)));
    }));
  };
  input.addEventListener('input', () => {
    draw();
    // Keep the search in the address so that it survives a reload.
    const q = input.value.trim();
    history.replaceState(null, '', q ? `#/streams?q=${encodeURIComponent(q)}` : '#/streams');
  });
  draw();
  const list = h('table', { id: 'streams' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Stream'), h('th', {}, 'Version'), h('th', {}, 'Last event'))),
    body);
  replace(main, h('h1', {}, 'Streams'), h('div', { class: 'toolbar' }, input), count, list);
  input.focus();
}

const PAGE = 50;

/** `#/streams/<name>?from=&direction=`: a stream's events, a page at a time. */
export async function renderStream(main, name, query) {
  const direction = query.get('direction') === 'backward' ? 'backward' : 'forward';
  const from = query.get('from');
  const answer = await api.get(`/api/streams/${api.seg(name)}/events`, {
    from, limit: PAGE, direction,
  });
  const events = api.items(answer, 'events');
  const at = (params) => {
    const search = new URLSearchParams(params).toString();
    return `${route('streams', name)}${search ? `?${search}` : ''}`;
  };
  const go = (params) => { location.hash = at(params); };
  const last = events.at(-1);
  const next = last === undefined ? null
    : direction === 'forward' ? last.version + 1 : last.version - 1;
  const nav = h('div', { class: 'toolbar' },
    button('First', () => go({ direction: 'forward' })),
    button('Latest', () => go({ direction: 'backward' })),
    button(direction === 'forward' ? 'Older first ⇅' : 'Newest first ⇅',
      () => go({ direction: direction === 'forward' ? 'backward' : 'forward' })),
    events.length === PAGE && next !== null && next >= 0
      ? button('Next page', () => go({ direction, from: next }), { id: 'next-page' })
      : null);
  replace(main,
    h('p', { class: 'crumbs' }, link('Streams', 'streams'), ' / '),
    h('h1', {}, h('span', { class: 'stream-name' }, name)),
    nav,
    events.length === 0 ? notice('info', 'No events here.') : eventTable(events, { stream: false }));
}

/**
 * A table of recorded events; each row links to the event. Options:
 * `stream` shows the stream column; `tbodyId` names the body for live rows.
 */
export function eventTable(events, { stream = true, id } = {}) {
  const headers = ['Position', stream ? 'Stream' : 'Version', 'Type', 'Id', 'Recorded'];
  return table(headers, events.map((e) => eventRow(e, { stream })), { id, class: 'events' });
}

/** One event as a table row. */
export function eventRow(e, { stream = true } = {}) {
  return h('tr', { 'data-event-id': e.id },
    h('td', { class: 'num' }, e.position ?? ''),
    stream
      ? h('td', {}, e.stream ? link(e.stream, 'streams', e.stream) : h('span', { class: 'muted' }, '—'),
        e.version !== undefined && e.version !== null ? h('span', { class: 'muted' }, ` @${e.version}`) : null)
      : h('td', { class: 'num' }, e.version ?? ''),
    h('td', {}, h('span', { class: 'type' }, e.type)),
    h('td', {}, h('a', { href: route('events', e.id), class: 'event-link' }, shortId(e.id))),
    h('td', {}, time(e.recorded_at)));
}
