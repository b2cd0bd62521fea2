// Talking to the BIDViz routes of this TensorBoard: JSON GETs, CSRF-protected POSTs, and waiting for a
// command's response. Every path is relative, so it works under TensorBoard's --path_prefix too.
//
// Every route but the tab's own code answers only TensorBoard's own user. On a Linux machine the server asks the
// kernel who opened the connection, so the owner's browser needs nothing more. Where it cannot tell (another host,
// a proxy), the tab proves it with the owner's control token, which it gets once from the link `bidviz tab-link`
// prints (`http://HOST:PORT/#bidviz&token=...`): read from the address of TensorBoard's page (same origin as this
// frame) or of this frame, kept in sessionStorage for this browser tab, and sent as a header on every request.

import {downloadUrl} from './dom.js';

export const TOKEN_HEADER = 'X-BIDViz-Token';
const TOKEN_KEY = 'bidviz.token';
let keptToken = null; // when sessionStorage is unavailable

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }

  // Refused because this server cannot tell that the request comes from its own user.
  get notOwner() {
    return this.status === 403 && /bidviz tab-link/.test(this.message);
  }
}

// `#bidviz&token=abc` -> 'abc', and the hash without it ('#bidviz'); null when there is none.
function tokenIn(text, mark) {
  const parts = text.replace(/^[#?]/, '').split('&');
  const found = parts.find((p) => p.startsWith('token='));
  if (!found) return null;
  const rest = parts.filter((p) => p && !p.startsWith('token=')).join('&');
  let token = found.slice('token='.length);
  try {
    token = decodeURIComponent(token);
  } catch (_) {
    // not %-encoded: as it is
  }
  return {token, rest: rest ? `${mark}${rest}` : ''};
}

// Take a token from an address (the top window's first, then this frame's), keep it, and take it out of the
// address bar (history.replaceState: no reload, no hashchange for TensorBoard's router), so it is neither left in
// the history nor shown on screen.
function takeTokenFromAddress() {
  const windows = [];
  try {
    if (window.top !== window) windows.push(window.top);
  } catch (_) {
    // not readable: another origin
  }
  windows.push(window);
  for (const win of windows) {
    let loc;
    try {
      loc = win.location;
      void loc.hash;
    } catch (_) {
      continue;
    }
    for (const [part, mark] of [['hash', '#'], ['search', '?']]) {
      const found = tokenIn(loc[part], mark);
      if (!found || !found.token) continue;
      keepToken(found.token);
      const hash = part === 'hash' ? found.rest : loc.hash;
      const search = part === 'search' ? found.rest : loc.search;
      try {
        win.history.replaceState(win.history.state, '', `${loc.pathname}${search}${hash}`);
      } catch (_) {
        // the address keeps it; the token works all the same
      }
      return found.token;
    }
  }
  return null;
}

function keepToken(token) {
  keptToken = token;
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch (_) {
    // storage disabled: kept in memory for this page
  }
}

// The control token to send, or null when there is none (the owner on loopback needs none). Looked up on every
// request, so opening a new link of `bidviz tab-link` in the same browser tab takes effect at once.
export function controlToken() {
  const fresh = takeTokenFromAddress();
  if (fresh) return fresh;
  try {
    return sessionStorage.getItem(TOKEN_KEY) || keptToken;
  } catch (_) {
    return keptToken;
  }
}

export function withToken(headers = {}) {
  const token = controlToken();
  return token ? {...headers, [TOKEN_HEADER]: token} : headers;
}

// What to run to get a link for this very page: host and port when TensorBoard is served plainly, else its URL.
export function tabLinkCommand() {
  let loc = window.location;
  try {
    if (window.top !== window && window.top.location.host) loc = window.top.location;
  } catch (_) {
    // keep this frame's
  }
  if (loc.protocol === 'http:' && loc.pathname === '/') {
    const port = loc.port || '80';
    const host = loc.hostname === '127.0.0.1' ? '' : ` --host ${loc.hostname}`;
    return `bidviz tab-link${host}${port === '6006' ? '' : ` --port ${port}`}`;
  }
  return `bidviz tab-link --url ${loc.origin}${loc.pathname}`;
}

export async function errorOf(resp) {
  const text = await resp.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') return new ApiError(resp.status, body.error);
  } catch (_) {
    // not JSON: TensorBoard's own error page, or a proxy's
  }
  return new ApiError(resp.status, text.trim() || `HTTP ${resp.status}`);
}

export async function getJson(path, params = {}) {
  const query = new URLSearchParams(params).toString();
  const resp = await fetch(query ? `./${path}?${query}` : `./${path}`, {credentials: 'same-origin', headers: withToken()});
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

// Save what `url` answers as `filename`, sending the control token (a plain link cannot send a header).
export async function download(url, filename) {
  const resp = await fetch(url, {credentials: 'same-origin', headers: withToken()});
  if (!resp.ok) throw await errorOf(resp);
  const blobUrl = URL.createObjectURL(await resp.blob());
  downloadUrl(blobUrl, filename);
  setTimeout(() => URL.revokeObjectURL(blobUrl), 10000);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One tab's connection: its CSRF token (fetched on the first POST, again after TensorBoard restarts), and the
// control token when there is one.
export class Api {
  constructor() {
    this.token = null;
  }

  hasControlToken() {
    return Boolean(controlToken());
  }

  async csrfToken(refresh = false) {
    if (this.token === null || refresh) this.token = (await getJson('csrf')).token;
    return this.token;
  }

  async postJson(path, body) {
    for (let attempt = 0; ; attempt++) {
      const resp = await fetch(`./${path}`, {
        method: 'POST',
        credentials: 'same-origin',
        headers: withToken({'Content-Type': 'application/json', 'X-BIDViz-CSRF': await this.csrfToken(attempt > 0)}),
        body: JSON.stringify(body),
      });
      if (resp.ok) return resp.json();
      const err = await errorOf(resp);
      // A restarted TensorBoard has a new token: fetch it once and resend.
      if (resp.status === 403 && attempt === 0 && /X-BIDViz-CSRF/.test(err.message)) continue;
      throw err;
    }
  }

  // Send one command and wait for the bridge's response. `onQueued` hears the id (and the bridge's liveness)
  // as soon as the command is in the inbox; the promise resolves with the response, or rejects on timeout or
  // when the response cannot be read (a corrupt response file: the error names it).
  async sendCommand(run, kind, args, {timeoutMs = 120000, onQueued = null} = {}) {
    const {id, live} = await this.postJson('command', {run, kind, args});
    if (onQueued) onQueued(id, live);
    const deadline = Date.now() + timeoutMs;
    let wait = 60;
    while (Date.now() < deadline) {
      const resp = await getJson('response', {run, id}); // 202 {"status": "pending"} until the bridge answers
      if (resp.status !== 'pending') return resp;
      await sleep(wait);
      wait = Math.min(wait * 1.5, 400);
    }
    throw new ApiError(
      504,
      `no response within ${Math.round(timeoutMs / 1000)} s (command ${id}); unless the bridge took it in ` +
        'time, it expires and is never applied (a bridge that comes back answers it Expired): see the journal',
    );
  }
}

// The text of a failed response: message, then the full traceback when there is one.
export function errorText(error) {
  if (!error) return '';
  const head = `${error.type || 'Error'}: ${error.message || ''}`;
  return error.traceback ? `${error.traceback.trimEnd()}` : head;
}
