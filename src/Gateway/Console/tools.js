// @ts-check
// tools.js: what the SAE browser and the steering playground share — running a job to its end,
// listing artifacts (GET /v1/artifacts), safetensors. (Reading an artifact and streamed answers are
// in core.js, which the jobs page uses too.)
import { json, h, stateWord, followJob } from './core.js';

/**
 * Submits a job and follows it to its end (followJob), calling onUpdate with each record seen.
 * Answers the final record, or null when the user navigated away meanwhile. Throws when the job did
 * not succeed, with its error.
 * @param {string} plugin @param {string} model @param {unknown} parameters @param {(job: any) => void} onUpdate
 */
export async function runJob(plugin, model, parameters, onUpdate) {
  const submitted = await json('POST', '/v1/jobs', { plugin, model, parametersJson: JSON.stringify(parameters) });
  const job = await followJob(submitted, onUpdate);
  if (job && job.state !== 'JOB_STATE_SUCCEEDED')
    throw new Error(`job ${job.id} ended ${stateWord(job)}${job.errorCode ? ' (' + job.errorCode + ')' : ''}: ${job.error || 'no error given'}`);
  return job;
}

/** A line saying where a followed job is, with a link to its page. @param {any} job @param {string} what */
export function jobLine(job, what) {
  const pct = Math.round((job.progress ?? 0) * 100);
  return h('span', { 'data-job-state': job.state },
    `${what}: job `, h('a', { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id),
    ` — ${stateWord(job)} (${pct}%)${job.message ? ': ' + job.message : ''}`);
}

/** The JSON of a result table's rows. @param {any} job @param {string} name @returns {any[]} */
export function tableRows(job, name) {
  const t = (job.result?.tables ?? []).find((/** @type {any} */ x) => x.name === name);
  return t ? JSON.parse(t.rowsJson ?? '[]') : [];
}

/** @param {any} job */
export function summary(job) { return JSON.parse(job.result?.summaryJson || '{}'); }

/** Every artifact (all pages of GET /v1/artifacts). @returns {Promise<any[]>} */
export async function listArtifacts() {
  /** @type {any[]} */
  const all = [];
  let token = '';
  do {
    const q = new URLSearchParams({ pageSize: '1000' });
    if (token) q.set('pageToken', token);
    const page = await json('GET', '/v1/artifacts?' + q);
    all.push(...(page.artifacts ?? []));
    token = page.nextPageToken ?? '';
  } while (token);
  return all;
}

/** @param {any} a */
export function isSae(a) { return (a.files ?? []).some((/** @type {any} */ f) => f.name === 'cfg.json' || f.name === 'params.npz'); }

/** @param {any} a */
export function metadataOf(a) { try { return JSON.parse(a.metadataJson || '{}') ?? {}; } catch { return {}; } }

/** The artifact route of a name (its segments escaped, the slashes kept). @param {string} name */

/** float16 bits to a number. @param {number} b */
function half(b) {
  const s = b & 0x8000 ? -1 : 1, e = (b >> 10) & 0x1f, f = b & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/**
 * The tensors of a safetensors file (float32, float16 and bfloat16 read as numbers).
 * @param {Uint8Array} file @returns {Map<string, {shape: number[], values: Float32Array}>}
 */
export function safetensors(file) {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  if (file.length < 8) throw new Error('not a safetensors file (too short)');
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + n)));
  const base = 8 + n;
  /** @type {Map<string, {shape: number[], values: Float32Array}>} */
  const out = new Map();
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [start, end] = t.data_offsets;
    const count = /** @type {number[]} */ (t.shape).reduce((a, b) => a * b, 1);
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      if (t.dtype === 'F32') values[i] = view.getFloat32(base + start + 4 * i, true);
      else if (t.dtype === 'F16') values[i] = half(view.getUint16(base + start + 2 * i, true));
      else if (t.dtype === 'BF16') values[i] = new Float32Array(new Uint32Array([view.getUint16(base + start + 2 * i, true) << 16]).buffer)[0];
      else throw new Error(`tensor ${name} is ${t.dtype}; the console reads F32, F16 and BF16`);
    }
    if (base + end > file.length) throw new Error(`tensor ${name} runs past the end of the file`);
    out.set(name, { shape: t.shape, values });
  }
  return out;
}

/** Float32 values as base64 little-endian bytes (a Tensor's `data`). @param {Float32Array} values */
export function float32Base64(values) {
  const b = new Uint8Array(values.length * 4);
  const view = new DataView(b.buffer);
  values.forEach((v, i) => view.setFloat32(i * 4, v, true));
  let s = '';
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
}

