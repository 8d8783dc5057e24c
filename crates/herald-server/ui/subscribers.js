// Subscribers: each one's status, checkpoint and lag, with enable, disable
// and replay.

import * as api from './api.js';
import { button, h, notice, replace, table } from './dom.js';

/** `#/subscribers`. */
export async function render(main) {
  const flash = h('div', { id: 'flash' });
  const list = h('div');
  const draw = async () => {
    const subs = api.items(await api.get('/api/subscriptions'), 'subscriptions', 'subscribers');
    replace(list, subs.length === 0
      ? notice('info', 'No subscribers. Add a webhook subscriber with POST /api/subscriptions.')
      : table(['Name', 'Topics', 'Target', 'Status', 'Checkpoint', 'Lag', 'Dead letters', ''],
        subs.map((s) => row(s, flash, draw)), { id: 'subscribers' }));
  };
  await draw();
  replace(main, h('h1', {}, 'Subscribers'), flash,
    h('div', { class: 'toolbar' }, button('Refresh', draw)), list);
}

/** The status word of a subscriber, whatever the answer calls it. */
function status(s) {
  if (typeof s.status === 'string') return s.status;
  if (typeof s.state === 'string') return s.state;
  if (s.enabled === false || s.disabled === true) return 'disabled';
  return s.status?.state ?? 'unknown';
}

function row(s, flash, redraw) {
  const name = s.name;
  const path = `/api/subscriptions/${api.seg(name)}`;
  const act = (verb, body) => async () => {
    try {
      const answer = await api.post(`${path}/${verb}`, body);
      let done = `${verb}d`;
      if (verb === 'replay') {
        done = answer?.checkpoint === undefined ? 'replayed'
          : `replays the events after position ${answer.checkpoint}`;
      }
      replace(flash, notice('ok', `${name}: ${done}.`));
    } catch (err) {
      replace(flash, notice('error', `${name}: ${err.message}`));
    }
    await redraw();
  };
  const word = status(s);
  const enabled = !/disabled|paused|stopped/i.test(word);
  return h('tr', { 'data-subscriber': name },
    h('td', {}, h('strong', {}, name)),
    h('td', {}, (s.topics ?? []).map((t) => h('code', { class: 'topic' }, t))),
    h('td', {}, s.url ? h('code', { class: 'url' }, s.url) : h('span', { class: 'muted' }, s.kind ?? 'in process')),
    h('td', {}, h('span', { class: `status ${word.toLowerCase()}` }, word),
      s.running === false ? h('div', { class: 'muted' }, 'not running on this server') : null,
      s.error || s.last_error ? h('div', { class: 'error-text' }, s.error ?? s.last_error) : null),
    h('td', { class: 'num' }, s.checkpoint ?? '—'),
    h('td', { class: 'num lag' }, s.lag ?? '—'),
    h('td', { class: 'num' }, s.dead_letters ?? s.dead_lettered ?? '—'),
    h('td', { class: 'actions' },
      enabled ? button('Disable', act('disable'), { class: 'disable' })
        : button('Enable', act('enable'), { class: 'enable' }),
      replayForm(name, act)));
}

/** Replay from the start, a position or a time. */
function replayForm(name, act) {
  const from = h('select', { 'aria-label': `Replay ${name} from` },
    h('option', { value: 'start' }, 'the start'),
    h('option', { value: 'position' }, 'a position'),
    h('option', { value: 'time' }, 'a time'));
  const value = h('input', { type: 'text', 'aria-label': 'Position or time', placeholder: '', hidden: true });
  from.addEventListener('change', () => {
    value.hidden = from.value === 'start';
    value.type = from.value === 'time' ? 'datetime-local' : 'number';
    value.min = from.value === 'position' ? '0' : '';
  });
  const replay = button('Replay', async () => {
    let body;
    if (from.value === 'start') body = { from: 'start' };
    else if (from.value === 'position') body = { position: Number(value.value) };
    else body = { time: new Date(value.value).toISOString() };
    if (!confirm(`Replay ${name} from ${from.value === 'start' ? 'the start' : value.value}?`)) return;
    await act('replay', body)();
  }, { class: 'replay' });
  return h('span', { class: 'replay-form' }, ' from ', from, value, replay);
}
