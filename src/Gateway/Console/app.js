// @ts-check
// InterpMesh web console (docs/console.md): plain ES module, no dependencies, no build step.
// It talks to the gateway's REST routes (docs/rest.md) on this origin with the API key the user
// typed, kept in sessionStorage and sent only in the Authorization header (never in URLs or logs).

const KEY = 'interpmesh.apiKey';
const TERMINAL = new Set(['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED', 'JOB_STATE_INTERRUPTED']);
const POLL_MS = 1000;

/** An error answer of the gateway: the HTTP status and the server's message. */
class ApiError extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) { super(message); this.status = status; }
}

/**
 * Calls a REST route; answers the body text, or throws ApiError with the server's message.
 * @param {string} method @param {string} path @param {unknown} [body] @param {string} [model]
 */
async function api(method, path, body, model) {
  /** @type {Record<string, string>} */
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers.authorization = 'Bearer ' + key;
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (model) headers['interpmesh-model'] = model;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  const text = await r.text();
  if (!r.ok) {
    let message = text;
    try { message = JSON.parse(text).message ?? text; } catch { /* not JSON */ }
    throw new ApiError(r.status, message || r.statusText);
  }
  return text;
}

/** @param {string} method @param {string} path @param {unknown} [body] @param {string} [model] */
async function json(method, path, body, model) { return JSON.parse(await api(method, path, body, model)); }

/**
 * Creates an element: h('td', {class: 'x', 'data-v': 1}, 'text', child).
 * Text is always set as text (never parsed as HTML).
 * @param {string} tag @param {Record<string, unknown>} [attrs] @param {...(Node|string|number|null|undefined)} children
 * @returns {HTMLElement}
 */
function h(tag, attrs = {}, ...children) {
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

const main = /** @type {HTMLElement} */ (document.getElementById('main'));
const statusLine = /** @type {HTMLElement} */ (document.getElementById('status'));
let generation = 0; // bumped on every navigation: stops the previous page's polling

/** @param {...Node} nodes */
function show(...nodes) { main.replaceChildren(...nodes); }

/** A clear message for an error, saying what to do for the usual ones. @param {unknown} e */
function describe(e) {
  if (e instanceof ApiError) {
    if (e.status === 401) return `The gateway did not accept your API key (401 Unauthenticated): ${e.message}. Enter a valid key on the API key page.`;
    if (e.status === 403) return `Your API key may not do this (403 Permission denied): ${e.message}`;
    return `${e.message} (HTTP ${e.status})`;
  }
  return e instanceof Error ? e.message : String(e);
}

/** @param {unknown} e */
function errorBox(e) {
  const box = h('p', { class: 'error', role: 'alert' }, describe(e));
  if (e instanceof ApiError && e.status === 401) box.append(' ', h('a', { href: '#/key' }, 'Enter a key'));
  return box;
}

/** @param {string} base64 */
function bytes(base64) {
  const s = atob(base64);
  const b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
  return b;
}

/** Decodes a Tensor or the concatenated chunks of a capture into numbers. @param {Uint8Array} b @param {string} dtype */
function decode(b, dtype) {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  /** @type {number[]} */
  const out = [];
  if (dtype === 'DTYPE_INT64') for (let i = 0; i + 8 <= b.length; i += 8) out.push(Number(view.getBigInt64(i, true)));
  else if (dtype === 'DTYPE_INT32') for (let i = 0; i + 4 <= b.length; i += 4) out.push(view.getInt32(i, true));
  else if (dtype === 'DTYPE_FLOAT32' || !dtype) for (let i = 0; i + 4 <= b.length; i += 4) out.push(view.getFloat32(i, true));
  else throw new Error(`dtype ${dtype} is not decoded by the console; capture as DTYPE_FLOAT32`);
  return out;
}

// ---------------------------------------------------------------- key page

function keyPage() {
  const input = /** @type {HTMLInputElement} */ (h('input', { id: 'api-key', type: 'password', autocomplete: 'off', required: true, 'aria-describedby': 'key-help' }));
  const message = h('div', { id: 'key-message', 'aria-live': 'polite' });
  const form = h('form', { id: 'key-form' },
    h('label', { for: 'api-key' }, 'API key'),
    input,
    h('small', { id: 'key-help' }, 'Kept in this tab’s session storage only and sent in the Authorization header; closing the tab forgets it.'),
    h('div', {}, h('button', { type: 'submit' }, 'Use this key'), ' ', h('button', { type: 'button', id: 'forget-key', onclick: () => { sessionStorage.removeItem(KEY); message.replaceChildren(h('p', {}, 'Key forgotten.')); } }, 'Forget key')),
    message);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    if (!key) { message.replaceChildren(h('p', { class: 'error', role: 'alert' }, 'Type a key first.')); return; }
    sessionStorage.setItem(KEY, key);
    message.replaceChildren(h('p', {}, 'Checking the key…'));
    try {
      await api('GET', '/v1/plugins');
      message.replaceChildren(h('p', { id: 'key-ok' }, 'Key accepted.'));
      location.hash = '#/jobs';
    } catch (e) {
      sessionStorage.removeItem(KEY);
      message.replaceChildren(errorBox(e));
      message.querySelector('a')?.remove();
    }
  });
  show(h('h1', {}, 'API key'), h('p', {}, 'Enter the API key the gateway’s operator gave you (a key with the analyze role can run analyses; read keys can look).'), form);
  input.focus();
}

// ---------------------------------------------------------------- jobs list

/** @param {any} job */
function stateCell(job) {
  const name = String(job.state ?? '').replace('JOB_STATE_', '').toLowerCase();
  return h('span', { class: `state-${job.state}`, 'data-state': job.state }, name);
}

/** @param {any} job */
function progressCell(job) {
  const pct = Math.round((job.progress ?? 0) * 100);
  return h('span', {}, h('progress', { max: 100, value: pct, 'aria-label': `progress of ${job.id}` }), ` ${pct}%`);
}

async function jobsPage() {
  const pluginSelect = /** @type {HTMLSelectElement} */ (h('select', { id: 'filter-plugin' }, h('option', { value: '' }, 'all plugins')));
  const ownerInput = /** @type {HTMLInputElement} */ (h('input', { id: 'filter-owner', type: 'text', placeholder: 'any owner' }));
  const body = h('tbody');
  const note = h('div', { id: 'jobs-note' });
  show(h('h1', {}, 'Jobs'),
    h('div', { class: 'filters' },
      h('div', {}, h('label', { for: 'filter-plugin' }, 'Plugin'), pluginSelect),
      h('div', {}, h('label', { for: 'filter-owner' }, 'Owner'), ownerInput)),
    h('table', { id: 'jobs' }, h('caption', {}, 'Newest first; refreshed every second'),
      h('thead', {}, h('tr', {}, ...['Job', 'Plugin', 'Model', 'Owner', 'State', 'Progress', 'Message', 'Created'].map(c => h('th', { scope: 'col' }, c)))),
      body),
    note);
  const gen = generation;
  try {
    const plugins = await json('GET', '/v1/plugins');
    for (const p of plugins.plugins ?? []) pluginSelect.append(h('option', { value: p.id }, p.id));
  } catch (e) { note.replaceChildren(errorBox(e)); return; }
  async function once() {
    const q = new URLSearchParams({ pageSize: '100' });
    if (pluginSelect.value) q.set('plugin', pluginSelect.value);
    const list = await json('GET', '/v1/jobs?' + q);
    const owner = ownerInput.value.trim().toLowerCase();
    const jobs = (list.jobs ?? []).filter((/** @type {any} */ j) => !owner || String(j.owner ?? '').toLowerCase().includes(owner));
    body.replaceChildren(...jobs.map((/** @type {any} */ j) => h('tr', { 'data-job': j.id },
      h('td', {}, h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id)),
      h('td', {}, j.plugin), h('td', {}, j.model), h('td', {}, j.owner),
      h('td', {}, stateCell(j)), h('td', {}, progressCell(j)), h('td', {}, j.message ?? ''),
      h('td', {}, j.created ? new Date(j.created).toLocaleString() : ''))));
    note.replaceChildren(jobs.length ? '' : 'No jobs match.');
  }
  let timer = 0;
  const loop = async () => {
    if (gen !== generation) return;
    try { await once(); } catch (e) { note.replaceChildren(errorBox(e)); return; }
    if (gen === generation) timer = window.setTimeout(loop, POLL_MS);
  };
  const again = () => { clearTimeout(timer); loop(); };
  pluginSelect.addEventListener('change', again);
  ownerInput.addEventListener('input', again);
  loop();
}

// ---------------------------------------------------------------- one job

/** A result table. @param {any} t */
function resultTable(t) {
  let rows = [];
  try { rows = JSON.parse(t.rowsJson ?? '[]'); } catch { /* shown empty */ }
  return h('table', { class: 'result-table', 'data-table': t.name },
    h('caption', {}, t.name),
    h('thead', {}, h('tr', {}, ...(t.columns ?? []).map((/** @type {string} */ c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, ...rows.map((/** @type {unknown[]} */ r) => h('tr', {}, ...r.map(v => h('td', {}, typeof v === 'number' ? (Number.isInteger(v) ? v : v.toFixed(4)) : typeof v === 'string' ? v : JSON.stringify(v)))))));
}

/** A figure as an image: SVG in an <img> cannot run script or fetch anything. @param {any} f */
function resultFigure(f) {
  const type = f.mediaType === 'image/png' ? 'image/png' : f.mediaType === 'image/svg+xml' ? 'image/svg+xml' : null;
  if (!type) return h('p', {}, `Figure ${f.name}: media type ${f.mediaType} is not shown.`);
  return h('figure', { 'data-figure': f.name },
    h('img', { src: `data:${type};base64,${f.content ?? ''}`, alt: f.caption || f.name }),
    h('figcaption', {}, `${f.name}${f.caption ? ': ' + f.caption : ''}`));
}

/** @param {string} id */
async function jobPage(id) {
  const gen = generation;
  const head = h('div', { id: 'job-head' });
  const log = h('ol', { id: 'job-log' });
  const params = h('pre', { id: 'job-parameters' });
  const result = h('div', { id: 'job-result' });
  const note = h('div');
  const cancel = /** @type {HTMLButtonElement} */ (h('button', { type: 'button', id: 'cancel-job' }, 'Cancel job'));
  show(h('h1', {}, `Job ${id}`), head, cancel, note, h('h2', {}, 'Parameters'), params, h('h2', {}, 'Progress log'), log, result);
  let last = '';
  cancel.addEventListener('click', async () => {
    try { await api('POST', `/v1/jobs/${encodeURIComponent(id)}:cancel`); statusLine.textContent = `Cancel requested for ${id}.`; }
    catch (e) { note.replaceChildren(errorBox(e)); }
  });
  const loop = async () => {
    if (gen !== generation) return;
    let job;
    try { job = await json('GET', `/v1/jobs/${encodeURIComponent(id)}`); } catch (e) { note.replaceChildren(errorBox(e)); return; }
    if (gen !== generation) return;
    head.replaceChildren(h('dl', { class: 'info' },
      h('dt', {}, 'Plugin'), h('dd', {}, job.plugin), h('dt', {}, 'Model'), h('dd', {}, job.model || '(default)'),
      h('dt', {}, 'Owner'), h('dd', {}, job.owner), h('dt', {}, 'State'), h('dd', { id: 'job-state' }, stateCell(job)),
      h('dt', {}, 'Progress'), h('dd', {}, progressCell(job)),
      ...(job.error ? [h('dt', {}, 'Error'), h('dd', { class: 'error', role: 'alert' }, `${job.errorCode ?? ''} ${job.error}`)] : [])));
    let p = job.parametersJson ?? '';
    try { p = JSON.stringify(JSON.parse(p), null, 2); } catch { /* as sent */ }
    params.textContent = p;
    const line = `${job.state.replace('JOB_STATE_', '').toLowerCase()} ${Math.round((job.progress ?? 0) * 100)}%${job.message ? ': ' + job.message : ''}`;
    if (line !== last) { log.append(h('li', {}, `${new Date().toLocaleTimeString()} ${line}`)); last = line; }
    const done = TERMINAL.has(job.state);
    cancel.hidden = done;
    if (done) {
      const r = job.result;
      if (r) {
        let summary = r.summaryJson ?? '';
        try { summary = JSON.stringify(JSON.parse(summary), null, 2); } catch { /* as sent */ }
        result.replaceChildren(
          h('h2', {}, 'Summary'), h('pre', { id: 'job-summary' }, summary),
          h('h2', {}, 'Tables'), ...(r.tables?.length ? r.tables.map(resultTable) : [h('p', {}, 'None.')]),
          h('h2', {}, 'Figures'), ...(r.figures?.length ? r.figures.map(resultFigure) : [h('p', {}, 'None.')]),
          h('h2', {}, 'Artifacts'), r.artifacts?.length
            ? h('ul', { id: 'job-artifacts' }, ...r.artifacts.map((/** @type {string} */ a) => h('li', {}, h('code', {}, a))))
            : h('p', {}, 'None.'),
          r.artifacts?.length ? h('p', {}, 'Fetch artifacts with the CLI (interpmesh artifacts) or the ArtifactService; the console does not download them yet.') : '');
      }
      return;
    }
    window.setTimeout(loop, POLL_MS);
  };
  loop();
}

// ---------------------------------------------------------------- run an analysis

/** Types of a schema node, without "null". @param {any} s @returns {string[]} */
function types(s) {
  const t = s?.type;
  return (Array.isArray(t) ? t : t ? [t] : []).filter(x => x !== 'null');
}

/** The kind of control a property gets. @param {any} s */
function kind(s) {
  const t = types(s);
  if (Array.isArray(s?.enum)) return 'enum';
  if (t.length === 1 && (t[0] === 'integer' || t[0] === 'number')) return 'number';
  if (t.length === 1 && t[0] === 'boolean') return 'boolean';
  if (t.length === 1 && t[0] === 'string') return 'string';
  if (t.length === 1 && t[0] === 'array' && ['string', 'integer', 'number'].includes(types(s.items)[0]) && types(s.items).length === 1) return 'list';
  return 'json';
}

/** @param {any} schema @param {string} name */
function field(schema, name, required) {
  const s = schema;
  const k = kind(s);
  const id = `param-${name}`;
  const desc = [s.description, required ? 'required' : null, k === 'list' ? 'one value per line' : null, k === 'json' ? 'JSON' : null,
    s.minimum !== undefined ? `≥ ${s.minimum}` : null, s.maximum !== undefined ? `≤ ${s.maximum}` : null].filter(Boolean).join('; ');
  /** @type {HTMLElement} */
  let control;
  const def = s.default;
  if (k === 'enum') {
    control = h('select', { id, name }, required ? null : h('option', { value: '' }, '(default)'),
      ...s.enum.filter((/** @type {unknown} */ v) => v !== null).map((/** @type {unknown} */ v) => h('option', { value: String(v), selected: def === v }, String(v))));
  } else if (k === 'boolean') {
    control = h('select', { id, name }, h('option', { value: '' }, '(default)'),
      h('option', { value: 'true', selected: def === true }, 'true'), h('option', { value: 'false', selected: def === false }, 'false'));
  } else if (k === 'number') {
    control = h('input', { id, name, type: 'number', step: types(s)[0] === 'integer' ? 1 : 'any', min: s.minimum, max: s.maximum, value: def ?? undefined });
  } else if (k === 'string') {
    control = h('input', { id, name, type: 'text', value: def ?? undefined });
  } else if (k === 'list') {
    control = h('textarea', { id, name, rows: 3 });
    if (Array.isArray(def)) control.textContent = def.join('\n');
  } else {
    control = h('textarea', { id, name, rows: 5 });
    if (def !== undefined && def !== null) control.textContent = JSON.stringify(def);
  }
  control.setAttribute('aria-describedby', `${id}-help ${id}-error`);
  control.dataset.kind = k;
  control.dataset.type = types(s.items ?? s)[0] ?? '';
  return h('div', { class: 'field', 'data-field': name },
    h('label', { for: id }, name, required ? ' *' : ''), control,
    h('small', { id: `${id}-help` }, desc),
    h('p', { class: 'field-error', id: `${id}-error`, role: 'alert', 'data-error-for': name }));
}

/** Reads a control into a value; undefined when left empty. @param {HTMLInputElement} c */
function valueOf(c) {
  const v = c.value.trim();
  if (v === '') return undefined;
  switch (c.dataset.kind) {
    case 'number': return Number(v);
    case 'boolean': return v === 'true';
    case 'enum': return c.dataset.type === 'integer' || c.dataset.type === 'number' ? Number(v) : v;
    case 'list': return v.split('\n').map(x => x.trim()).filter(Boolean).map(x => c.dataset.type === 'string' ? x : Number(x));
    case 'json':
      try { return JSON.parse(v); } catch (e) { throw new FieldError(c.name, `not valid JSON: ${e instanceof Error ? e.message : e}`); }
    default: return v;
  }
}

class FieldError extends Error {
  /** @param {string} field @param {string} message */
  constructor(field, message) { super(message); this.field = field; }
}

async function runPage() {
  const gen = generation;
  const pluginSelect = /** @type {HTMLSelectElement} */ (h('select', { id: 'run-plugin', required: true }));
  const modelInput = /** @type {HTMLInputElement} */ (h('input', { id: 'run-model', type: 'text', placeholder: 'the gateway’s default model', 'aria-describedby': 'run-model-help' }));
  const about = h('p', { id: 'plugin-about' });
  const fields = h('div', { id: 'plugin-fields' });
  const formError = h('div', { id: 'form-error', 'aria-live': 'polite' });
  const form = h('form', { id: 'run-form', novalidate: true },
    h('label', { for: 'run-plugin' }, 'Plugin'), pluginSelect,
    h('label', { for: 'run-model' }, 'Model'), modelInput, h('small', { id: 'run-model-help' }, 'Name of a model the gateway routes (empty: its default).'),
    about, fields, formError, h('button', { type: 'submit', id: 'submit-job' }, 'Submit'));
  show(h('h1', {}, 'Run an analysis'), form);
  /** @type {Record<string, any>} */
  let schema = {};
  let plugins;
  try { plugins = (await json('GET', '/v1/plugins')).plugins ?? []; } catch (e) { formError.replaceChildren(errorBox(e)); return; }
  if (gen !== generation) return;
  for (const p of plugins) pluginSelect.append(h('option', { value: p.id, disabled: !p.loaded }, p.loaded ? p.id : `${p.id} (not loaded: ${p.error})`));
  const wanted = new URLSearchParams(location.hash.split('?')[1] ?? '').get('plugin');
  if (wanted) pluginSelect.value = wanted;
  const build = () => {
    const p = plugins.find((/** @type {any} */ x) => x.id === pluginSelect.value);
    formError.replaceChildren();
    if (!p) { fields.replaceChildren(); return; }
    about.textContent = `${p.description} (version ${p.version})`;
    try { schema = JSON.parse(p.parameterSchemaJson || '{}'); } catch { schema = {}; }
    const required = new Set(schema.required ?? []);
    fields.replaceChildren(...Object.entries(schema.properties ?? {}).map(([name, s]) => field(s, name, required.has(name))));
  };
  pluginSelect.addEventListener('change', build);
  build();
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    for (const e of form.querySelectorAll('.field-error')) e.textContent = '';
    formError.replaceChildren();
    /** @type {Record<string, unknown>} */
    const parameters = {};
    try {
      for (const c of /** @type {NodeListOf<HTMLInputElement>} */ (fields.querySelectorAll('input, select, textarea'))) {
        const v = valueOf(c);
        if (v !== undefined) parameters[c.name] = v;
      }
    } catch (e) {
      if (e instanceof FieldError) { showFieldError(e.field, e.message); return; }
      throw e;
    }
    try {
      const job = await json('POST', '/v1/jobs', { plugin: pluginSelect.value, model: modelInput.value.trim(), parametersJson: JSON.stringify(parameters) });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (e) {
      // The server's validation message, at the field it names when it names one.
      const names = Object.keys(schema.properties ?? {}).sort((a, b) => b.length - a.length);
      const msg = e instanceof Error ? e.message : String(e);
      const named = e instanceof ApiError && e.status === 400 ? names.find(n => new RegExp(`(^|[^A-Za-z0-9_])${n}([^A-Za-z0-9_]|$)`).test(msg)) : undefined;
      if (named) showFieldError(named, msg);
      else formError.replaceChildren(errorBox(e));
    }
  });
  /** @param {string} name @param {string} message */
  function showFieldError(name, message) {
    const el = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (el) el.textContent = message;
    /** @type {HTMLElement|null} */ (form.querySelector(`#param-${CSS.escape(name)}`))?.focus();
  }
}

// ---------------------------------------------------------------- model explorer

/**
 * Runs the model on a prompt capturing one layer's attention pattern; answers the token ids, their
 * texts and the pattern as [head][query][key] arrays.
 * @param {string} model @param {string} prompt @param {number} layer
 */
async function attention(model, prompt, layer) {
  const hook = `blocks.${layer}.attn.hook_pattern`;
  const text = await api('POST', '/v1/model/run', { inputs: [{ text: prompt }], captures: [{ hooks: [hook], dtype: 'DTYPE_FLOAT32' }] }, model);
  /** @type {any[]} */
  const chunks = [];
  let result = null;
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const m = JSON.parse(line);
    if (m.activation) chunks.push(m.activation);
    else if (m.result) result = m.result;
    else if (m.message) throw new ApiError(500, m.message);
  }
  if (!result || !chunks.length) throw new Error('the run answered no pattern');
  chunks.sort((a, b) => Number(a.offset ?? 0) - Number(b.offset ?? 0));
  const total = Number(chunks[0].totalBytes);
  const all = new Uint8Array(total);
  for (const c of chunks) all.set(bytes(c.data ?? ''), Number(c.offset ?? 0));
  const values = decode(all, chunks[0].dtype);
  const shape = chunks[0].shape.map(Number); // [batch, head, pos, key_pos]
  const [, nh, nq, nk] = shape;
  const ids = decode(bytes(result.tokens.data), result.tokens.dtype);
  const texts = (await json('POST', '/v1/model/detokenize', { tokens: ids.map(i => ({ ids: [i] })) }, model)).texts ?? [];
  /** @type {number[][][]} */
  const pattern = [];
  for (let hd = 0; hd < nh; hd++) {
    const rows = [];
    for (let q = 0; q < nq; q++) rows.push(values.slice((hd * nq + q) * nk, (hd * nq + q + 1) * nk));
    pattern.push(rows);
  }
  return { ids, texts, pattern };
}

/** One head's grid: rows are query tokens, columns key tokens; each cell shows its value. @param {number} layer @param {number} head @param {string[]} texts @param {number[][]} rows */
function grid(layer, head, texts, rows) {
  const label = (/** @type {number} */ i) => `${i}:${texts[i] ?? ''}`;
  const readout = h('p', { class: 'readout', 'aria-live': 'polite' }, 'Hover or focus a query token to see where it attends.');
  const table = h('table', { class: 'grid', 'data-layer': layer, 'data-head': head },
    h('caption', {}, `L${layer}H${head}`),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'query \\ key'), ...texts.map((_, k) => h('th', { scope: 'col', 'data-k': k }, label(k))))),
    h('tbody', {}, ...rows.map((r, q) => {
      const th = h('th', { scope: 'row', tabindex: 0, 'data-q': q }, label(q));
      const tr = h('tr', { 'data-q': q }, th, ...r.map((v, k) => {
        const td = h('td', { 'data-q': q, 'data-k': k, 'data-value': v, title: `${label(q)} → ${label(k)}: ${v.toFixed(4)}` }, k <= q ? v.toFixed(2) : '');
        td.style.backgroundColor = `rgba(5, 80, 174, ${Math.min(1, Math.max(0, v)) * 0.85})`;
        if (v > 0.5) td.style.color = '#fff';
        return td;
      }));
      const focus = () => {
        for (const o of table.querySelectorAll('.focus, .hot')) o.classList.remove('focus', 'hot');
        tr.classList.add('focus');
        let best = 0;
        r.forEach((v, k) => { if (v > r[best]) best = k; });
        tr.querySelector(`td[data-k="${best}"]`)?.classList.add('hot');
        readout.textContent = `${label(q)} attends most to ${label(best)} (${r[best].toFixed(3)})`;
      };
      th.addEventListener('mouseenter', focus);
      th.addEventListener('focus', focus);
      return tr;
    })));
  return h('div', { class: 'head' }, table, readout);
}

async function modelPage() {
  const gen = generation;
  const modelInput = /** @type {HTMLInputElement} */ (h('input', { id: 'model-name', type: 'text', placeholder: 'the gateway’s default model' }));
  const info = h('div', { id: 'model-info' });
  const prompt = /** @type {HTMLTextAreaElement} */ (h('textarea', { id: 'prompt', rows: 2 }));
  prompt.value = new URLSearchParams(location.hash.split('?')[1] ?? '').get('prompt') ?? 'Once upon a time';
  const layer = /** @type {HTMLSelectElement} */ (h('select', { id: 'layer' }));
  const tokens = h('div', { id: 'tokens' });
  const heads = h('div', { class: 'heads', id: 'heads' });
  const note = h('div', { 'aria-live': 'polite' });
  const load = h('button', { type: 'button', id: 'load-model' }, 'Load model');
  const go = h('button', { type: 'submit', id: 'show-attention' }, 'Tokenize and show attention');
  const form = h('form', { id: 'attention-form' },
    h('label', { for: 'prompt' }, 'Prompt'), prompt,
    h('label', { for: 'layer' }, 'Layer'), layer, h('div', {}, go));
  const m0 = new URLSearchParams(location.hash.split('?')[1] ?? '').get('model');
  if (m0) modelInput.value = m0;
  show(h('h1', {}, 'Model explorer'),
    h('label', { for: 'model-name' }, 'Model'), modelInput, ' ', load,
    info, h('h2', {}, 'Tokens and attention'), form, note, tokens, heads);
  const loadInfo = async () => {
    try {
      const mi = await json('GET', '/v1/model/info', undefined, modelInput.value.trim());
      if (gen !== generation) return;
      const scalars = Object.entries(mi).filter(([, v]) => typeof v !== 'object');
      info.replaceChildren(h('h2', {}, 'Model'), h('dl', { class: 'info' }, ...scalars.flatMap(([k, v]) => [h('dt', {}, k), h('dd', { 'data-info': k }, String(v))])),
        h('details', {}, h('summary', {}, `Hooks (${(mi.hooks ?? []).length})`),
          h('table', { id: 'hooks' }, h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Hook'), h('th', { scope: 'col' }, 'Layer'), h('th', { scope: 'col' }, 'Shape'))),
            h('tbody', {}, ...(mi.hooks ?? []).map((/** @type {any} */ x) => h('tr', {}, h('td', {}, x.name), h('td', {}, x.layer ?? 0), h('td', {}, x.shape)))))));
      const n = mi.nLayers ?? 0;
      const keep = layer.value;
      layer.replaceChildren(...Array.from({ length: n }, (_, i) => h('option', { value: i }, String(i))));
      const wantedLayer = new URLSearchParams(location.hash.split('?')[1] ?? '').get('layer');
      if (keep && Number(keep) < n) layer.value = keep; else if (wantedLayer && Number(wantedLayer) < n) layer.value = wantedLayer;
    } catch (e) { info.replaceChildren(errorBox(e)); }
  };
  load.addEventListener('click', loadInfo);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    note.replaceChildren('Running…');
    try {
      const l = Number(layer.value);
      const a = await attention(modelInput.value.trim(), prompt.value, l);
      if (gen !== generation) return;
      tokens.replaceChildren(h('p', {}, 'Tokens: '), h('ol', { class: 'tokens', start: 0 }, ...a.ids.map((id, i) => h('li', { 'data-token': id }, `${JSON.stringify(a.texts[i] ?? '')} (id ${id})`))));
      heads.replaceChildren(...a.pattern.map((rows, hd) => grid(l, hd, a.texts, rows)));
      note.replaceChildren(h('span', { id: 'attention-done' }, `Layer ${l}: ${a.pattern.length} heads, ${a.ids.length} tokens. Each cell is the weight from the row's query token to the column's key token.`));
    } catch (e) { note.replaceChildren(errorBox(e)); }
  });
  await loadInfo();
}

// ---------------------------------------------------------------- router

async function route() {
  generation++;
  const hash = location.hash || '#/jobs';
  const [path] = hash.slice(1).split('?');
  const parts = path.split('/').filter(Boolean);
  const page = parts[0] ?? 'jobs';
  for (const a of document.querySelectorAll('nav a')) {
    if (a.getAttribute('data-page') === page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  statusLine.textContent = '';
  if (page !== 'key' && !sessionStorage.getItem(KEY)) { keyPage(); return; }
  try {
    if (page === 'key') keyPage();
    else if (page === 'jobs' && parts[1]) await jobPage(decodeURIComponent(parts[1]));
    else if (page === 'run') await runPage();
    else if (page === 'model') await modelPage();
    else await jobsPage();
  } catch (e) { show(errorBox(e)); }
}

window.addEventListener('hashchange', route);
route();
