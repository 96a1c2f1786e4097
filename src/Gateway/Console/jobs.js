// @ts-check
import { TERMINAL, POLL_MS, api, json, h, show, errorBox, statusLine, nav, artifact, stateWord, followJob } from './core.js';

// ---------------------------------------------------------------- jobs list

/** @param {any} job */
export function stateCell(job) {
  return h('span', { class: `state-${job.state}`, 'data-state': job.state }, stateWord(job));
}

/** @param {any} job */
export function progressCell(job) {
  const pct = Math.round((job.progress ?? 0) * 100);
  return h('span', {}, h('progress', { max: 100, value: pct, 'aria-label': `progress of ${job.id}` }), ` ${pct}%`);
}

export async function jobsPage() {
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
  const gen = nav.generation;
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
    if (gen !== nav.generation) return;
    try { await once(); } catch (e) { note.replaceChildren(errorBox(e)); return; }
    if (gen === nav.generation) timer = window.setTimeout(loop, POLL_MS);
  };
  const again = () => { clearTimeout(timer); loop(); };
  pluginSelect.addEventListener('change', again);
  ownerInput.addEventListener('input', again);
  loop();
}

// ---------------------------------------------------------------- one job

/** A result table. @param {any} t */
export function resultTable(t) {
  let rows = [];
  try { rows = JSON.parse(t.rowsJson ?? '[]'); } catch { /* shown empty */ }
  return h('table', { class: 'result-table', 'data-table': t.name },
    h('caption', {}, t.name),
    h('thead', {}, h('tr', {}, ...(t.columns ?? []).map((/** @type {string} */ c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, ...rows.map((/** @type {unknown[]} */ r) => h('tr', {}, ...r.map(v => h('td', {}, typeof v === 'number' ? (Number.isInteger(v) ? v : v.toFixed(4)) : typeof v === 'string' ? v : JSON.stringify(v)))))));
}

/** A figure as an image: SVG in an <img> cannot run script or fetch anything. @param {any} f */
export function resultFigure(f) {
  const type = f.mediaType === 'image/png' ? 'image/png' : f.mediaType === 'image/svg+xml' ? 'image/svg+xml' : null;
  if (!type) return h('p', {}, `Figure ${f.name}: media type ${f.mediaType} is not shown.`);
  return h('figure', { 'data-figure': f.name },
    h('img', { src: `data:${type};base64,${f.content ?? ''}`, alt: f.caption || f.name }),
    h('figcaption', {}, `${f.name}${f.caption ? ': ' + f.caption : ''}`));
}

/** @param {string} id */
export async function jobPage(id) {
  const gen = nav.generation;
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
  /** Shows a job record; answers whether it has finished. @param {any} job */
  const render = (job) => {
    head.replaceChildren(h('dl', { class: 'info' },
      h('dt', {}, 'Plugin'), h('dd', {}, job.plugin), h('dt', {}, 'Model'), h('dd', {}, job.model || '(default)'),
      h('dt', {}, 'Owner'), h('dd', {}, job.owner), h('dt', {}, 'State'), h('dd', { id: 'job-state' }, stateCell(job)),
      h('dt', {}, 'Progress'), h('dd', {}, progressCell(job)),
      ...(job.error ? [h('dt', {}, 'Error'), h('dd', { class: 'error', role: 'alert' }, `${job.errorCode ?? ''} ${job.error}`)] : [])));
    let p = job.parametersJson ?? '';
    try { p = JSON.stringify(JSON.parse(p), null, 2); } catch { /* as sent */ }
    params.textContent = p;
    const line = `${stateWord(job)} ${Math.round((job.progress ?? 0) * 100)}%${job.message ? ': ' + job.message : ''}`;
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
            ? h('ul', { id: 'job-artifacts' }, ...r.artifacts.map(artifactItem))
            : h('p', {}, 'None.'));
      }
    }
    return done;
  };
  // The record, then the job followed live to its end (followJob: the watch stream, else polling).
  try {
    const job = await json('GET', `/v1/jobs/${encodeURIComponent(id)}`);
    if (gen !== nav.generation) return;
    await followJob(job, (j) => { if (gen === nav.generation) render(j); });
  } catch (e) {
    if (gen === nav.generation) note.replaceChildren(errorBox(e));
  }
}

/**
 * An artifact of a job: its name and a button that fetches it and offers each of its files for
 * download (the key goes in the Authorization header, so a plain link cannot fetch it).
 * @param {string} name
 */
function artifactItem(name) {
  const files = h('ul', { class: 'artifact-files', 'data-files-of': name });
  const button = /** @type {HTMLButtonElement} */ (h('button', { type: 'button', 'data-artifact': name }, 'Show files'));
  button.addEventListener('click', async () => {
    button.disabled = true;
    files.replaceChildren(h('li', {}, 'Loading…'));
    try {
      const a = await artifact(name);
      files.replaceChildren(...[...a.files].map(([file, data]) => {
        const base = file.split('/').pop() ?? file;
        const link = h('a', { href: URL.createObjectURL(new Blob([data.slice().buffer])), download: base, 'data-file': file }, `Download ${file}`);
        return h('li', {}, link, ` (${data.length.toLocaleString()} bytes)`);
      }));
      if (!a.files.size) files.replaceChildren(h('li', {}, 'No files.'));
    } catch (e) {
      files.replaceChildren(h('li', {}, errorBox(e)));
      button.disabled = false;
    }
  });
  return h('li', {}, h('code', {}, name), ' ', button, files);
}
