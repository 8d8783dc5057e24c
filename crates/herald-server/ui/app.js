// The Herald UI: a router over the URL's fragment, the navigation, and
// the token prompt. Each view is a module exporting `render(main, params)`
// that may answer a function to call when the view is left.

import * as api from './api.js';
import { h, notice, replace } from './dom.js';
import * as streams from './streams.js';
import * as event from './event.js';
import * as log from './log.js';
import * as subscribers from './subscribers.js';
import * as deadLetters from './dead_letters.js';

// Routes: the fragment's first segment names the view; the others are
// its parameters (decoded); `?a=b` after them becomes `params.query`.
const VIEWS = {
  streams: { nav: 'streams', render: (main, [name], query) =>
    name === undefined ? streams.renderList(main, query) : streams.renderStream(main, name, query) },
  events: { nav: 'log', render: (main, [id]) => event.render(main, id) },
  log: { nav: 'log', render: (main, _, query) => log.render(main, query) },
  subscribers: { nav: 'subscribers', render: (main) => subscribers.render(main) },
  'dead-letters': { nav: 'dead-letters', render: (main, [id]) => deadLetters.render(main, id) },
};

const main = document.getElementById('view');
let leave = null;
let generation = 0;

/** Parses `#/view/a/b?x=1` into its view, parameters and query. */
function parse(hash) {
  const [path, search = ''] = hash.replace(/^#\/?/, '').split('?');
  const [view = 'streams', ...params] = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { view, params, query: new URLSearchParams(search) };
}

async function show() {
  const current = ++generation;
  if (leave) {
    try { leave(); } catch (err) { console.error(err); }
    leave = null;
  }
  const { view, params, query } = parse(location.hash);
  const entry = VIEWS[view];
  for (const a of document.querySelectorAll('#nav a')) {
    if (entry && a.dataset.view === entry.nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!entry) {
    replace(main, notice('error', `There is no view called “${view}”.`));
    return;
  }
  replace(main, h('p', { class: 'muted' }, 'Loading…'));
  try {
    const cleanup = await entry.render(main, params, query);
    if (current !== generation) {
      if (typeof cleanup === 'function') cleanup();
    } else if (typeof cleanup === 'function') {
      leave = cleanup;
    }
  } catch (err) {
    if (current === generation) replace(main, notice('error', err.message ?? String(err)));
  }
}

/** Whether the view that called is still the one shown. */
export function stillShown(at) {
  return at === generation;
}

/** The number of the view being shown, to compare with stillShown. */
export function shown() {
  return generation;
}

// The token prompt: a modal dialog; pending API calls wait for it.
const dialog = document.getElementById('token-dialog');
const input = document.getElementById('token-input');
const reason = document.getElementById('token-reason');
let waiting = [];

function openTokenDialog(why) {
  reason.textContent = why || 'This server asks for a bearer token.';
  input.value = api.token() ?? '';
  if (!dialog.open) dialog.showModal();
  input.focus();
}

function settle(ok) {
  const pending = waiting;
  waiting = [];
  for (const { resolve, reject } of pending) {
    if (ok) resolve();
    else reject(new api.ApiError(401, 'Unauthorized', 'a bearer token is needed: use the Token button'));
  }
}

document.getElementById('token-form').addEventListener('submit', () => {
  api.setToken(input.value);
  const pending = waiting.length > 0;
  settle(true);
  // Pending calls go on with the token; otherwise the view is drawn again
  // with it.
  if (!pending) show();
});
document.getElementById('token-forget').addEventListener('click', () => {
  api.setToken('');
  dialog.close();
  settle(false);
});
document.getElementById('token-cancel').addEventListener('click', () => {
  dialog.close();
  settle(false);
});
dialog.addEventListener('cancel', () => settle(false));
document.getElementById('token-button').addEventListener('click', () => openTokenDialog(
  api.token() ? 'A token is stored: change or forget it.' : 'No token is stored.',
));

api.onUnauthorized((detail) => new Promise((resolve, reject) => {
  waiting.push({ resolve, reject });
  openTokenDialog(detail);
}));

window.addEventListener('hashchange', show);
if (!location.hash) history.replaceState(null, '', '#/streams');
show();
