// One event: its fields, its payload and metadata pretty-printed as text,
// and its place in its conversation: the event that caused it, the events
// it caused, and the others with the same correlation id, as a tree.

import * as api from './api.js';
import { h, json, link, notice, replace, route, shortId, time } from './dom.js';
import { shown, stillShown } from './app.js';

// The events of a conversation are looked up in the global log by
// correlation id (`GET /api/events?correlation_id=`), a page at a time, up
// to this many.
const PAGE = 1000;
const MAX_FOUND = 5000;

/** `#/events/<id>`. */
export async function render(main, id) {
  const at = shown();
  const e = unwrap(await api.get(`/api/events/${api.seg(id)}`));
  const metadata = e.metadata ?? {};
  const correlation = metadata.correlation_id ?? null;
  const causation = metadata.causation_id ?? null;

  const facts = h('dl', { class: 'facts', id: 'event-facts' },
    fact('Id', h('code', { id: 'event-id' }, e.id)),
    fact('Type', h('span', { class: 'type', id: 'event-type' }, e.type)),
    fact('Stream', e.stream ? link(e.stream, 'streams', e.stream) : h('span', { class: 'muted' }, '—')),
    fact('Version', e.version ?? '—'),
    fact('Position', e.position ?? '—'),
    fact('Recorded', time(e.recorded_at)),
    fact('Caused by', causation ? h('a', { href: route('events', causation), id: 'caused-by' }, shortId(causation)) : h('span', { class: 'muted' }, '— (a first event)')),
    fact('Correlation', correlation ? h('code', { id: 'correlation-id' }, correlation) : '—'),
    e.origin ? fact('Linked from', link(`${e.origin.stream} @${e.origin.version}`, 'streams', e.origin.stream)) : null);

  const chain = h('section', { id: 'chain', 'aria-busy': 'true' },
    h('h2', {}, 'Causation and correlation'),
    h('p', { class: 'muted' }, 'Searching the global log…'));

  replace(main,
    h('p', { class: 'crumbs' },
      e.stream ? [link('Streams', 'streams'), ' / ', link(e.stream, 'streams', e.stream), ' / '] : [link('Global log', 'log'), ' / ']),
    h('h1', {}, 'Event ', h('span', { class: 'type' }, e.type)),
    facts,
    h('div', { class: 'payloads' },
      h('section', {}, h('h2', {}, 'Data'), json(e.data, { id: 'event-data' })),
      h('section', {}, h('h2', {}, 'Metadata'), json(metadata, { id: 'event-metadata' }))),
    chain);

  try {
    const related = await conversation(e, correlation);
    if (!stillShown(at)) return;
    replace(chain, h('h2', {}, 'Causation and correlation'), ...drawChain(e, related));
  } catch (err) {
    if (!stillShown(at)) return;
    replace(chain, h('h2', {}, 'Causation and correlation'), notice('error', err.message ?? String(err)));
  }
  chain.removeAttribute('aria-busy');
}

function fact(term, ...value) {
  return [h('dt', {}, term), h('dd', {}, value)];
}

/** The event in an answer that is the event or wraps it. */
function unwrap(answer) {
  return answer && answer.event && answer.event.id ? answer.event : answer;
}

/**
 * The events of the conversation: those with the event's correlation id
 * (every event herald publishes while handling another carries it, and
 * the first event's id is the correlation id). Answers
 * `{ events, root, complete }`.
 */
async function conversation(e, correlation) {
  const found = new Map([[e.id, e]]);
  let complete = true;
  if (correlation) {
    let after = null;
    for (;;) {
      const answer = await api.get('/api/events', { correlation_id: correlation, after, limit: PAGE });
      for (const x of api.items(answer, 'events')) found.set(x.id, x);
      if (answer?.next === null || answer?.next === undefined) break;
      if (found.size >= MAX_FOUND) {
        complete = false;
        break;
      }
      after = answer.next;
    }
  }
  const root = correlation ? found.get(correlation) ?? null : e;
  return { events: [...found.values()], root, complete };
}

function drawChain(e, { events, root, complete }) {
  const byId = new Map(events.map((x) => [x.id, x]));
  const children = new Map();
  for (const x of events) {
    const parent = x.metadata?.causation_id;
    if (parent && parent !== x.id) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(x);
    }
  }
  for (const list of children.values()) list.sort((a, b) => (a.position ?? 0) - (b.position ?? 0));

  // Up the causation chain, as far as the events are known.
  const ancestors = [];
  const seen = new Set([e.id]);
  for (let at = e.metadata?.causation_id; at && !seen.has(at); at = byId.get(at)?.metadata?.causation_id) {
    seen.add(at);
    ancestors.unshift(at);
    if (!byId.has(at)) break;
  }
  const caused = children.get(e.id) ?? [];
  const correlated = events.filter((x) => x.id !== e.id
    && (x.metadata?.correlation_id ?? null) === (e.metadata?.correlation_id ?? null));

  const out = [];
  out.push(h('h3', {}, 'Causation chain'));
  out.push(h('ol', { class: 'path', id: 'causation-path' },
    ancestors.map((id) => h('li', {}, ref(byId.get(id), id))),
    h('li', { class: 'current' }, ref(e, e.id), ' (this event)')));
  out.push(h('h3', {}, `Caused by this event (${caused.length})`));
  out.push(caused.length === 0
    ? h('p', { class: 'muted', id: 'caused-events' }, 'None found.')
    : h('ul', { id: 'caused-events' }, caused.map((x) => h('li', {}, ref(x, x.id)))));
  out.push(h('h3', {}, `Same correlation id (${correlated.length})`));
  if (correlated.length === 0) {
    out.push(h('p', { class: 'muted', id: 'correlated-events' }, 'None found.'));
  } else {
    // The conversation as a tree from its first event (or from each event
    // whose cause is not among those found).
    const roots = events
      .filter((x) => correlated.includes(x) || x.id === e.id)
      .filter((x) => !x.metadata?.causation_id || !byId.has(x.metadata.causation_id)
        || x.metadata.causation_id === x.id)
      .sort((a, b) => (a.position ?? 0) - (b.position ?? 0));
    const drawn = new Set();
    const node = (x) => {
      if (drawn.has(x.id)) return null;
      drawn.add(x.id);
      const kids = (children.get(x.id) ?? []).map(node).filter(Boolean);
      return h('li', { class: x.id === e.id ? 'current' : null },
        ref(x, x.id), x.id === e.id ? ' (this event)' : null,
        kids.length ? h('ul', {}, kids) : null);
    };
    out.push(h('ul', { class: 'tree', id: 'correlated-events' }, roots.map(node)));
  }
  out.push(h('p', { class: 'muted' },
    `${events.length} event${events.length === 1 ? '' : 's'} with this correlation id`,
    complete ? '.' : ` shown; there are more (only the first ${MAX_FOUND} are looked at).`,
    root ? null : ' The first event of this conversation is not in the store.'));
  return out;
}

/** A link to an event, with its type when known. */
function ref(x, id) {
  return h('a', { href: route('events', id), class: 'event-ref' },
    x ? h('span', { class: 'type' }, x.type) : h('span', { class: 'muted' }, 'event'),
    ' ', shortId(id),
    x?.stream ? h('span', { class: 'muted' }, ` in ${x.stream}`) : null);
}
