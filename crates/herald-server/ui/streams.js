// Streams: the list with a search by name, and one stream's events.

import * as api from './api.js';
import { append, button, h, link, notice, replace, route, shortId, table, time } from './dom.js';

const STREAMS_PAGE = 200;

/**
 * `#/streams?q=`: the streams in name order, those whose name starts with
 * the search (the store looks them up by prefix, so this scales to any
 * number of streams), a page at a time.
 */
export async function renderList(main, query) {
  const input = h('input', {
    type: 'search', id: 'stream-search', placeholder: 'Name starts with…', value: query.get('q') ?? '',
    'aria-label': 'Search streams by name', autocomplete: 'off',
  });
  const count = h('p', { class: 'muted', id: 'stream-count' });
  const body = h('tbody');
  const more = h('div', { class: 'toolbar' });
  let shownCount = 0;
  let asked = 0;
  const load = async (prefix, after) => {
    const ticket = ++asked;
    const answer = await api.get('/api/streams', { prefix: prefix || null, after, limit: STREAMS_PAGE });
    if (ticket !== asked) return;
    const streams = api.items(answer, 'streams');
    if (!after) {
      body.replaceChildren();
      shownCount = 0;
    }
    shownCount += streams.length;
    append(body, streams.map((s) => h('tr', {},
      h('td', {}, link(s.stream, 'streams', s.stream)),
      h('td', { class: 'num' }, s.version ?? ''),
      h('td', { class: 'num' }, s.count ?? ''),
      h('td', {}, time(s.last_recorded_at)))));
    count.textContent = `${shownCount} stream${shownCount === 1 ? '' : 's'}${answer.next ? ' so far' : ''}`
      + (prefix ? ` starting with “${prefix}”` : '');
    replace(more, answer.next
      ? button('More streams', () => load(prefix, answer.next), { id: 'more-streams' })
      : null);
  };
  let timer = null;
  input.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      const q = input.value.trim();
      // Keep the search in the address so that it survives a reload.
      history.replaceState(null, '', q ? `#/streams?q=${encodeURIComponent(q)}` : '#/streams');
      load(q, null).catch((err) => replace(more, notice('error', err.message)));
    }, 200);
  });
  await load(input.value.trim(), null);
  const list = h('table', { id: 'streams' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Stream'), h('th', {}, 'Version'), h('th', {}, 'Events'),
      h('th', {}, 'Last event'))),
    body);
  replace(main, h('h1', {}, 'Streams'), h('div', { class: 'toolbar' }, input), count, list, more);
  input.focus();
  return () => clearTimeout(timer);
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
  const next = answer.next ?? null;
  const nav = h('div', { class: 'toolbar' },
    button('First', () => go({ direction: 'forward' })),
    button('Latest', () => go({ direction: 'backward' })),
    button(direction === 'forward' ? 'Older first ⇅' : 'Newest first ⇅',
      () => go({ direction: direction === 'forward' ? 'backward' : 'forward' })),
    next !== null
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
