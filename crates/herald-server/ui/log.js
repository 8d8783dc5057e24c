// The global log: every event in position order, a page at a time, with a
// type filter, and a live tail over server-sent events that adds new events
// at the top as they are recorded.

import * as api from './api.js';
import { button, h, notice, replace } from './dom.js';
import { eventRow, eventTable } from './streams.js';

const PAGE = 50;
// The live tail keeps at most this many rows on the page.
const LIVE_ROWS = 500;

function position(row) {
  const n = Number(row.cells[0]?.textContent);
  return Number.isFinite(n) ? n : -1;
}

/** `#/log?after=&types=`. */
export async function render(main, query) {
  const after = query.get('after');
  const types = query.get('types') ?? '';
  const answer = await api.get('/api/events', { after, limit: PAGE, types: types || null });
  const events = api.items(answer, 'events');

  const filter = h('input', {
    type: 'search', id: 'log-types', value: types, placeholder: 'Types, e.g. order.* or order.created,user.*',
    'aria-label': 'Event types', autocomplete: 'off',
  });
  const form = h('form', { class: 'toolbar', id: 'log-filter' },
    filter, h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (filter.value.trim()) q.set('types', filter.value.trim());
    location.hash = `#/log${q.size ? `?${q}` : ''}`;
  });

  const go = (params) => {
    const q = new URLSearchParams(params);
    if (types) q.set('types', types);
    location.hash = `#/log?${q}`;
  };
  const next = answer.next ?? null;
  const pages = h('div', { class: 'toolbar' },
    button('From the start', () => go({})),
    next !== null ? button('Next page', () => go({ after: next }), { id: 'log-next' }) : null);

  const table = eventTable(events, { id: 'log-events' });
  const tbody = table.querySelector('tbody');
  const status = h('span', { class: 'live-status muted', id: 'live-status', role: 'status' }, 'off');
  let source = null;
  const stop = () => {
    source?.close();
    source = null;
    status.textContent = 'off';
    live.textContent = 'Live tail';
    live.setAttribute('aria-pressed', 'false');
  };
  const start = async () => {
    // Newest first from now on: live events arrive at the top. On the last
    // page of the log the tail starts after its newest event, so none is
    // missed between the page and the subscription; on an older page it
    // starts from the head of the log, and the old page is cleared.
    let after;
    if (next === null) {
      const rows = [...tbody.rows].sort((a, b) => position(b) - position(a));
      tbody.append(...rows);
      after = rows.length ? Math.max(position(rows[0]), 0) : 0;
    } else {
      tbody.replaceChildren();
      after = 'now';
    }
    const params = { topics: types || null, after };
    source = api.subscribe(params, (e) => {
      if (tbody.querySelector(`tr[data-event-id="${CSS.escape(String(e.id))}"]`)) return;
      const row = eventRow(e);
      row.classList.add('fresh');
      tbody.prepend(row);
      while (tbody.rows.length > LIVE_ROWS) tbody.lastElementChild.remove();
      empty.hidden = true;
    }, (state) => { status.textContent = state; });
    status.textContent = 'connecting';
    live.textContent = 'Stop live tail';
    live.setAttribute('aria-pressed', 'true');
  };
  const live = button('Live tail', async () => (source ? stop() : start()), {
    id: 'live-tail', 'aria-pressed': 'false', class: 'primary',
  });
  const empty = notice('info', 'No events yet.');
  empty.hidden = events.length > 0;

  replace(main,
    h('h1', {}, 'Global log'),
    form,
    h('div', { class: 'toolbar' }, live, status, pages),
    empty,
    table);
  if (query.get('live') === '1') await start();
  return stop;
}
