// Building the page safely: every piece of text goes through textContent,
// every attribute through setAttribute, and links only ever point inside
// the page. Nothing here parses markup, so an event's payload is shown as
// the text it is, whatever it contains.

/**
 * Makes an element. `attrs` keys: `class`, `on<event>` (a listener),
 * `href` (a route inside the page, from `route()`), any other attribute.
 * Children: strings (as text), nodes, arrays of them; null is skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'href') {
      const href = String(value);
      if (!href.startsWith('#/')) throw new Error(`link outside the page: ${href}`);
      el.setAttribute('href', href);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

/** Appends children (strings as text nodes) to `el`. */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A route inside the page: `route('events', id)` is `#/events/<id>`. */
export function route(...segments) {
  return '#/' + segments.map((s) => encodeURIComponent(String(s))).join('/');
}

/** A link to a route inside the page. */
export function link(text, ...segments) {
  return h('a', { href: route(...segments) }, text);
}

/** A table with a header row and one row per item. */
export function table(headers, rows, attrs = {}) {
  return h(
    'table',
    attrs,
    h('thead', {}, h('tr', {}, headers.map((name) => h('th', {}, name)))),
    h('tbody', {}, rows),
  );
}

/** JSON pretty-printed in a <pre>, as text. */
export function json(value, attrs = {}) {
  return h('pre', { class: 'json', ...attrs }, JSON.stringify(value, null, 2) ?? 'null');
}

/** A date for people, keeping the exact value in a tooltip. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const date = new Date(iso);
  const text = Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  return h('time', { datetime: String(iso), title: String(iso) }, text);
}

/**
 * A short form of a UUID, the whole of it in a tooltip. Its start and end:
 * herald's ids are UUIDv7, whose first digits are a time, the same for the
 * events of one second.
 */
export function shortId(id) {
  const text = String(id ?? '');
  return h('code', { title: text }, text.length > 16 ? `${text.slice(0, 8)}…${text.slice(-4)}` : text);
}

/** A notice at the top of the view: `kind` is `error`, `ok` or `info`. */
export function notice(kind, ...text) {
  return h('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

/** A button that runs `action` once at a time and shows it is busy. */
export function button(text, action, attrs = {}) {
  const el = h('button', { type: 'button', ...attrs }, text);
  el.addEventListener('click', async () => {
    if (el.disabled) return;
    el.disabled = true;
    el.setAttribute('aria-busy', 'true');
    try {
      await action(el);
    } finally {
      el.disabled = false;
      el.removeAttribute('aria-busy');
    }
  });
  return el;
}
