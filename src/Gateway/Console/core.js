// @ts-check
// InterpMesh web console (docs/console.md): plain ES modules, no dependencies, no build step.
// It talks to the gateway's REST routes (docs/rest.md) on this origin with the API key the user
// typed, kept in sessionStorage and sent only in the Authorization header (never in URLs or logs).
// core.js: the REST call, element creation, errors and tensor decoding every page uses.

export const KEY = 'interpmesh.apiKey';
export const TERMINAL = new Set(['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED', 'JOB_STATE_INTERRUPTED']);
export const POLL_MS = 1000;

/** A job's state as a word ("running"), so a state never reads by colour alone. @param {any} job */
export function stateWord(job) {
  return String(job?.state ?? '').replace('JOB_STATE_', '').toLowerCase() || 'unknown';
}

/** An error answer of the gateway: the HTTP status and the server's message. */
export class ApiError extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) { super(message); this.status = status; }
}

/**
 * Sends a REST request with the key (Authorization header only), a JSON body and the model header.
 * @param {string} method @param {string} path @param {unknown} body @param {string} [model]
 */
function send(method, path, body, model) {
  /** @type {Record<string, string>} */
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers.authorization = 'Bearer ' + key;
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (model) headers['interpmesh-model'] = model;
  return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
}

/** The server's message of an error answer. @param {Response} r */
async function failure(r) {
  const text = await r.text();
  let message = text;
  try { message = JSON.parse(text).message ?? text; } catch { /* not JSON */ }
  return new ApiError(r.status, message || r.statusText);
}

/**
 * Calls a REST route; answers the body text, or throws ApiError with the server's message.
 * @param {string} method @param {string} path @param {unknown} [body] @param {string} [model]
 */
export async function api(method, path, body, model) {
  const r = await send(method, path, body, model);
  if (!r.ok) throw await failure(r);
  return r.text();
}

/** @param {string} method @param {string} path @param {unknown} [body] @param {string} [model] */
export async function json(method, path, body, model) { return JSON.parse(await api(method, path, body, model)); }

/**
 * Creates an element: h('td', {class: 'x', 'data-v': 1}, 'text', child).
 * Text is always set as text (never parsed as HTML).
 * @param {string} tag @param {Record<string, unknown>} [attrs] @param {...(Node|string|number|null|undefined)} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), /** @type {EventListener} */ (v));
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    el.append(typeof c === 'object' ? c : String(c));
  }
  return el;
}

export const main = /** @type {HTMLElement} */ (document.getElementById('main'));
export const statusLine = /** @type {HTMLElement} */ (document.getElementById('status'));
/** Bumped on every navigation: a page's polling stops when nav.generation moves on. */
export const nav = { generation: 0 };

/** @param {...Node} nodes */
export function show(...nodes) { main.replaceChildren(...nodes); }

/** A clear message for an error, saying what to do for the usual ones. @param {unknown} e */
export function describe(e) {
  if (e instanceof ApiError) {
    if (e.status === 401) return `The gateway did not accept your API key (401 Unauthenticated): ${e.message}. Enter a valid key on the API key page.`;
    if (e.status === 403) return `Your API key may not do this (403 Permission denied): ${e.message}`;
    return `${e.message} (HTTP ${e.status})`;
  }
  return e instanceof Error ? e.message : String(e);
}

/** @param {unknown} e */
export function errorBox(e) {
  const box = h('p', { class: 'error', role: 'alert' }, describe(e));
  if (e instanceof ApiError && e.status === 401) box.append(' ', h('a', { href: '#/key' }, 'Enter a key'));
  return box;
}

/** @param {string} base64 */
export function bytes(base64) {
  const s = atob(base64);
  const b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
  return b;
}

/** Decodes a Tensor or the concatenated chunks of a capture into numbers. @param {Uint8Array} b @param {string} dtype */
export function decode(b, dtype) {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  /** @type {number[]} */
  const out = [];
  if (dtype === 'DTYPE_INT64') for (let i = 0; i + 8 <= b.length; i += 8) out.push(Number(view.getBigInt64(i, true)));
  else if (dtype === 'DTYPE_INT32') for (let i = 0; i + 4 <= b.length; i += 4) out.push(view.getInt32(i, true));
  else if (dtype === 'DTYPE_FLOAT32' || !dtype) for (let i = 0; i + 4 <= b.length; i += 4) out.push(view.getFloat32(i, true));
  else throw new Error(`dtype ${dtype} is not decoded by the console; capture as DTYPE_FLOAT32`);
  return out;
}

/**
 * Reads an artifact (GET /v1/artifacts/{name}: a header, then each file's chunks as
 * newline-delimited JSON, data in base64); answers its description and each file's bytes.
 * @param {string} name
 * @returns {Promise<{info: any, files: Map<string, Uint8Array>}>}
 */
export async function artifact(name) {
  const text = await api('GET', '/v1/artifacts/' + name.split('/').map(encodeURIComponent).join('/'));
  let info = null;
  /** @type {Map<string, Uint8Array>} */
  const files = new Map();
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const m = JSON.parse(line);
    if (m.header) {
      info = m.header;
      for (const f of info.files ?? []) files.set(f.name, new Uint8Array(Number(f.bytes ?? 0)));
    } else if (m.data) {
      const target = files.get(m.data.file);
      if (!target) throw new Error(`artifact ${name}: data for ${m.data.file}, which its header does not list`);
      target.set(bytes(m.data.data ?? ''), Number(m.data.offset ?? 0));
    } else if (m.message) {
      throw new ApiError(500, m.message);
    }
  }
  if (!info) throw new Error(`artifact ${name}: the gateway sent no header`);
  return { info, files };
}

/**
 * Calls a streamed REST route (newline-delimited JSON: Run, Generate, WatchJob) and hands each
 * message to onMessage as it arrives; onMessage answers false to stop reading. An HTTP error throws
 * ApiError; so does an error object on a line (a stream that failed after it began).
 * @param {string} method @param {string} path @param {unknown} body @param {string} model
 * @param {(m: any) => boolean | void} onMessage
 */
export async function stream(method, path, body, model, onMessage) {
  const r = await send(method, path, body, model);
  if (!r.ok || !r.body) throw await failure(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let rest = '';
  /** @param {string} line @returns {boolean} whether to go on */
  const take = (line) => {
    if (!line.trim()) return true;
    const m = JSON.parse(line);
    if (m.code !== undefined && typeof m.message === 'string') throw new ApiError(500, `the stream failed: ${m.message}`);
    return onMessage(m) !== false;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    rest += value;
    let end;
    while ((end = rest.indexOf('\n')) >= 0) {
      const line = rest.slice(0, end);
      rest = rest.slice(end + 1);
      if (!take(line)) { await reader.cancel(); return; }
    }
  }
  take(rest);
}

/**
 * Follows a job from its record to its end: its events as they happen over the streamed
 * GET /v1/jobs/{id}:watch, and should that stream break off before the end (a gateway restarting),
 * its record polled every POLL_MS. Calls onUpdate with each record; answers the final one, or null
 * once the user has navigated away.
 * @param {any} job @param {(job: any) => void} onUpdate @returns {Promise<any>}
 */
export async function followJob(job, onUpdate) {
  const gen = nav.generation;
  const path = `/v1/jobs/${encodeURIComponent(job.id)}`;
  onUpdate(job);
  let final = TERMINAL.has(job.state) ? job : null;
  if (!final) {
    try {
      await stream('GET', path + ':watch', undefined, '', (m) => {
        if (gen !== nav.generation) return false;
        if (m.progress) {
          job = { ...job, state: m.progress.state ?? job.state, progress: m.progress.fraction ?? 0, message: m.progress.message ?? '' };
          onUpdate(job);
        } else if (m.finished) {
          final = m.finished;
          onUpdate(final);
        }
        return true;
      });
    } catch (e) {
      // A refusal (unknown job, key) is the answer; a broken stream is not.
      if (e instanceof ApiError && e.status !== 500) throw e;
    }
  }
  while (!final) {
    await new Promise(r => setTimeout(r, POLL_MS));
    if (gen !== nav.generation) return null;
    job = await json('GET', path);
    onUpdate(job);
    if (TERMINAL.has(job.state)) final = job;
  }
  return gen === nav.generation ? final : null;
}
