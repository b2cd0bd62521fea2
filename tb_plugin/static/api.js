// Talking to the BIDViz routes of this TensorBoard: JSON GETs, CSRF-protected POSTs, and waiting for a
// command's response. Every path is relative, so it works under TensorBoard's --path_prefix too.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorOf(resp) {
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
  const resp = await fetch(query ? `./${path}?${query}` : `./${path}`, {credentials: 'same-origin'});
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One tab's connection: its CSRF token (fetched on the first POST, again after TensorBoard restarts).
export class Api {
  constructor() {
    this.token = null;
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
        headers: {'Content-Type': 'application/json', 'X-BIDViz-CSRF': await this.csrfToken(attempt > 0)},
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
      `no response within ${Math.round(timeoutMs / 1000)} s (command ${id}); it stays in the inbox and will be ` +
        'applied when the bridge gets to it',
    );
  }
}

// The text of a failed response: message, then the full traceback when there is one.
export function errorText(error) {
  if (!error) return '';
  const head = `${error.type || 'Error'}: ${error.message || ''}`;
  return error.traceback ? `${error.traceback.trimEnd()}` : head;
}
