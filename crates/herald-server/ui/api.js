// Talking to the herald API: JSON in and out, the bearer token from
// localStorage, problem+json errors turned into readable messages, and a
// token prompt when the server answers 401.

const TOKEN_KEY = 'herald.token';

/** The stored token, or null. */
export function token() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

/** Stores the token (an empty one forgets it). */
export function setToken(value) {
  const trimmed = (value ?? '').trim();
  if (trimmed) localStorage.setItem(TOKEN_KEY, trimmed);
  else localStorage.removeItem(TOKEN_KEY);
}

/** An API failure: the status, and the problem's title and detail. */
export class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = detail;
  }
}

// Who asks for a token when the API answers 401; set by the app. It
// resolves once the user has entered one (or rejects if they cancel).
let askForToken = null;

/** Sets the function that prompts for a token. */
export function onUnauthorized(prompt) {
  askForToken = prompt;
}

/**
 * Calls the API. `path` starts with `/api/`; `query` is an object of
 * parameters (null and empty values left out); `body` is sent as JSON.
 * Answers the parsed JSON (null for an empty body).
 */
export async function call(method, path, { query, body, headers } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value !== null && value !== undefined && value !== '') url.searchParams.set(key, value);
  }
  for (;;) {
    const init = { method, headers: { Accept: 'application/json', ...headers } };
    const current = token();
    if (current) init.headers.Authorization = `Bearer ${current}`;
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, 'The server cannot be reached', String(err.message ?? err));
    }
    if (response.status === 401 && askForToken) {
      const problem = await readProblem(response);
      await askForToken(problem.detail);
      continue;
    }
    if (!response.ok) {
      const problem = await readProblem(response);
      throw new ApiError(response.status, problem.title, problem.detail);
    }
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }
}

async function readProblem(response) {
  let title = `${response.status} ${response.statusText}`.trim();
  let detail = '';
  try {
    const text = await response.text();
    try {
      const problem = JSON.parse(text);
      title = problem.title ?? title;
      detail = problem.detail ?? '';
    } catch {
      detail = text.slice(0, 500);
    }
  } catch {
    // The body could not be read: the status says enough.
  }
  return { title, detail };
}

export const get = (path, query) => call('GET', path, { query });
export const post = (path, body, query) => call('POST', path, { body, query });
export const del = (path) => call('DELETE', path);

/** A path segment, encoded. */
export const seg = (value) => encodeURIComponent(String(value));

/** The list in an answer that is either a list or an object holding one. */
export function items(answer, ...keys) {
  if (Array.isArray(answer)) return answer;
  for (const key of [...keys, 'items', 'data']) {
    if (answer && Array.isArray(answer[key])) return answer[key];
  }
  return [];
}

/**
 * Opens a live subscription (`/api/subscribe`) with EventSource, which
 * cannot send headers, so the token goes in `access_token`. Calls
 * `onEvent` with each recorded event; answers the EventSource.
 */
export function subscribe(query, onEvent, onState) {
  const url = new URL('/api/subscribe', location.origin);
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value !== null && value !== undefined && value !== '') url.searchParams.set(key, value);
  }
  const current = token();
  if (current) url.searchParams.set('access_token', current);
  const source = new EventSource(url);
  const deliver = (message) => {
    try {
      onEvent(JSON.parse(message.data), message.lastEventId);
    } catch (err) {
      console.error('herald: an unreadable live event', err);
    }
  };
  source.addEventListener('message', deliver);
  source.addEventListener('event', deliver);
  source.addEventListener('open', () => onState?.('open'));
  source.addEventListener('error', () =>
    onState?.(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting'),
  );
  return source;
}
