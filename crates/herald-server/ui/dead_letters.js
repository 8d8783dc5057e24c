// Dead letters: events a subscriber gave up on, with the error and the
// number of attempts; retry one, retry all, or discard.

import * as api from './api.js';
import { button, h, json, link, notice, replace, route, shortId, table, time } from './dom.js';

/** `#/dead-letters` or `#/dead-letters/<id>`. */
export async function render(main, id) {
  if (id !== undefined) return renderOne(main, id);
  const flash = h('div', { id: 'flash' });
  const list = h('div', { id: 'dead-letter-list' });
  const count = h('span', { class: 'muted', id: 'dead-letter-count' });
  const draw = async () => {
    const letters = api.items(await api.get('/api/dead-letters'), 'dead_letters');
    count.textContent = `${letters.length} dead letter${letters.length === 1 ? '' : 's'}`;
    retryAll.hidden = letters.length === 0;
    replace(list, letters.length === 0
      ? notice('ok', 'No dead letters.')
      : table(['Subscriber', 'Event', 'Attempts', 'Error', 'Last failed', ''],
        letters.map((d) => row(d, flash, draw)), { id: 'dead-letters' }));
  };
  const retryAll = button('Retry all', async () => {
    const outcome = await retryEvery();
    replace(flash, notice(outcome.failed ? 'error' : 'ok', outcome.text));
    await draw();
  }, { id: 'retry-all', class: 'primary' });
  await draw();
  replace(main, h('h1', {}, 'Dead letters'), flash,
    h('div', { class: 'toolbar' }, retryAll, button('Refresh', draw), count), list);
}

/** What a retry answered: delivered, or failed again with an error. */
function retried(answer) {
  const word = String(answer?.outcome ?? answer?.status ?? answer?.result ?? '').toLowerCase();
  const failed = word.includes('fail') || answer?.handled === false || answer?.delivered === false;
  return { failed, error: answer?.error ?? answer?.detail ?? null };
}

/** Retries every dead letter at once (`POST /api/dead-letters/retry`). */
async function retryEvery() {
  try {
    const results = api.items(await api.post('/api/dead-letters/retry'), 'results');
    const errors = [];
    let ok = 0;
    for (const r of results) {
      const outcome = retried(r);
      if (outcome.failed || r.outcome === 'error') errors.push(outcome.error ?? 'failed again');
      else ok += 1;
    }
    const text = `${ok} delivered, ${errors.length} failed again.`
      + (errors.length ? ` ${errors.slice(0, 3).join('; ')}` : '');
    return { failed: errors.length > 0, text };
  } catch (err) {
    return { failed: true, text: err.message };
  }
}

function row(d, flash, redraw) {
  const e = d.event ?? {};
  const retry = button('Retry', async () => {
    try {
      const r = retried(await api.post(`/api/dead-letters/${api.seg(d.id)}/retry`));
      replace(flash, r.failed
        ? notice('error', `Retried: failed again: ${r.error ?? ''}`)
        : notice('ok', `Delivered to ${d.subscriber}.`));
    } catch (err) {
      replace(flash, notice('error', err.message));
    }
    await redraw();
  }, { class: 'retry', 'data-id': d.id });
  const discard = button('Discard', async () => {
    if (!confirm(`Discard the dead letter of ${e.type ?? 'this event'} for ${d.subscriber}? The event stays in the log.`)) return;
    try {
      await api.del(`/api/dead-letters/${api.seg(d.id)}`);
      replace(flash, notice('ok', 'Discarded.'));
    } catch (err) {
      replace(flash, notice('error', err.message));
    }
    await redraw();
  }, { class: 'discard danger', 'data-id': d.id });
  return h('tr', { 'data-dead-letter': d.id },
    h('td', {}, d.subscriber),
    h('td', {}, e.id ? h('a', { href: route('events', e.id) }, h('span', { class: 'type' }, e.type), ' ', shortId(e.id)) : '—'),
    h('td', { class: 'num' }, d.attempts ?? '—'),
    h('td', { class: 'error-text' }, d.reason ?? d.error ?? '', ' ', link('details', 'dead-letters', d.id)),
    h('td', {}, time(d.last_failed_at)),
    h('td', { class: 'actions' }, retry, discard));
}

/** `#/dead-letters/<id>`: every attempt's error and the event. */
async function renderOne(main, id) {
  const d = await api.get(`/api/dead-letters/${api.seg(id)}`);
  const e = d.event ?? {};
  const errors = d.errors ?? [];
  replace(main,
    h('p', { class: 'crumbs' }, link('Dead letters', 'dead-letters'), ' / '),
    h('h1', {}, 'Dead letter ', shortId(d.id)),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Subscriber'), h('dd', {}, d.subscriber),
      h('dt', {}, 'Event'), h('dd', {}, e.id ? h('a', { href: route('events', e.id) }, e.type ?? 'event', ' ', shortId(e.id)) : '—'),
      h('dt', {}, 'Attempts'), h('dd', {}, d.attempts ?? '—'),
      h('dt', {}, 'First failed'), h('dd', {}, time(d.first_failed_at)),
      h('dt', {}, 'Last failed'), h('dd', {}, time(d.last_failed_at)),
      h('dt', {}, 'Reason'), h('dd', { class: 'error-text' }, d.reason ?? '')),
    h('h2', {}, 'Attempts'),
    errors.length === 0 ? h('p', { class: 'muted' }, 'No attempt recorded.')
      : table(['#', 'Kind', 'Error', 'At'], errors.map((a) => h('tr', {},
        h('td', { class: 'num' }, a.attempt), h('td', {}, a.kind ?? ''),
        h('td', { class: 'error-text' }, a.message ?? ''), h('td', {}, time(a.at))))),
    h('h2', {}, 'Event data'),
    json(e.data));
}
