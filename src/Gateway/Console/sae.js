// @ts-check
// sae.js: the SAE feature browser (#/sae). Pick an SAE artifact and texts; an `inspect` job of the
// sae plugin ranks the latents by density on those texts and lists each token's top latents (search
// by token); a feature's page (#/sae?sae=NAME&feature=F) runs `inspect` with `feature`: its
// top-activating texts with every token's activation, its density, the tokens it promotes and
// suppresses, and a link to steer with it.
import { h, show, errorBox, nav } from './core.js';
import { runJob, jobLine, tableRows, summary, listArtifacts, isSae } from './tools.js';

const TEXTS_KEY = 'interpmesh.sae.texts';
const DEFAULT_TEXTS = [
  'The cat sat on the mat and looked out of the window.',
  'Once upon a time there was a little girl who loved to read.',
  'The stock market fell sharply after the announcement.',
  'She said that she would come back tomorrow morning.',
];
/** Most features listed by density (the rest are counted, not shown). */
const LIST_LIMIT = 200;

/** Finished inspect jobs of this tab, by their parameters, so going back and forth does not rerun them. @type {Map<string, any>} */
const done = new Map();

/** @returns {URLSearchParams} */
function query() { return new URLSearchParams(location.hash.split('?')[1] ?? ''); }

/** @returns {string[]} */
function savedTexts() {
  try { const t = JSON.parse(sessionStorage.getItem(TEXTS_KEY) ?? 'null'); if (Array.isArray(t) && t.length) return t.map(String); } catch { /* default */ }
  return DEFAULT_TEXTS;
}

/** A link within the browser keeping the model. @param {Record<string, string|number>} params */
function link(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== undefined) q.set(k, String(v));
  return '#/sae?' + q;
}

/** Runs (or reuses) an inspect job, reporting progress in `note`. @param {string} model @param {any} parameters @param {HTMLElement} note @param {string} what */
async function inspect(model, parameters, note, what) {
  const key = JSON.stringify([model, parameters]);
  const cached = done.get(key);
  if (cached) { note.replaceChildren(jobLine(cached, what)); return cached; }
  const job = await runJob('sae', model, parameters, j => note.replaceChildren(jobLine(j, what)));
  if (job) done.set(key, job);
  return job;
}

/** A percentage with its raw value. @param {number} d */
function percent(d) { return `${(d * 100).toFixed(2)}%`; }

export async function saePage() {
  const q = query();
  if (q.get('sae') && q.get('feature') !== null && q.get('feature') !== '') await featurePage(q.get('sae') ?? '', Number(q.get('feature')), q.get('model') ?? '');
  else await browserPage(q.get('sae') ?? '', q.get('model') ?? '');
}

/** @param {string} sae0 @param {string} model0 */
async function browserPage(sae0, model0) {
  const gen = nav.generation;
  const modelInput = /** @type {HTMLInputElement} */ (h('input', { id: 'sae-model', type: 'text', placeholder: 'the gateway’s default model', value: model0 }));
  const saeSelect = /** @type {HTMLSelectElement} */ (h('select', { id: 'sae-artifact', required: true }));
  const texts = /** @type {HTMLTextAreaElement} */ (h('textarea', { id: 'sae-texts', rows: 6, 'aria-describedby': 'sae-texts-help' }));
  texts.value = savedTexts().join('\n');
  const go = h('button', { type: 'submit', id: 'find-features' }, 'Find features');
  const note = h('p', { id: 'sae-note', 'aria-live': 'polite' });
  const results = h('div', { id: 'sae-results' });
  const form = h('form', { id: 'sae-form' },
    h('label', { for: 'sae-model' }, 'Model'), modelInput,
    h('label', { for: 'sae-artifact' }, 'SAE artifact'), saeSelect,
    h('label', { for: 'sae-texts' }, 'Texts (one per line)'), texts,
    h('small', { id: 'sae-texts-help', class: 'help' }, 'The features are ranked by how often they fire on these texts; a feature’s page shows its top contexts among them.'),
    h('div', {}, go));
  show(h('h1', {}, 'SAE feature browser'), form, note, results);
  try {
    const saes = (await listArtifacts()).filter(isSae);
    if (gen !== nav.generation) return;
    if (!saes.length) {
      saeSelect.append(h('option', { value: '' }, 'no SAE artifacts'));
      note.replaceChildren('No SAE artifacts yet: train one with the sae plugin (Run an analysis → sae) or upload a SAELens folder with interpmesh artifacts put.');
      return;
    }
    for (const a of saes) saeSelect.append(h('option', { value: a.name }, a.name));
    if (sae0 && saes.some(a => a.name === sae0)) saeSelect.value = sae0;
  } catch (e) { note.replaceChildren(errorBox(e)); return; }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const lines = texts.value.split('\n').map(t => t.trim()).filter(Boolean);
    if (!lines.length) { note.replaceChildren(h('span', { class: 'error', role: 'alert' }, 'Enter at least one text.')); return; }
    sessionStorage.setItem(TEXTS_KEY, JSON.stringify(lines));
    const model = modelInput.value.trim(), sae = saeSelect.value;
    results.replaceChildren();
    try {
      const job = await inspect(model, { mode: 'inspect', sae, texts: lines }, note, 'Inspecting');
      if (!job || gen !== nav.generation) return;
      results.replaceChildren(...featureList(job, sae, model));
      note.append('. ', h('span', { id: 'features-done' }, 'The features are listed below.'));
    } catch (e) { note.replaceChildren(errorBox(e)); }
  });
  if (sae0) form.requestSubmit();
}

/** The density ranking and the token search of an inspect job without a feature. @param {any} job @param {string} sae @param {string} model */
function featureList(job, sae, model) {
  const density = tableRows(job, 'density');       // [feature, density, tokens]
  const perToken = tableRows(job, 'features');     // [text_index, position, token, [{feature, activation}]]
  const s = summary(job);
  // Where each feature is among a token's top 3: the tokens it is strongest on.
  /** @type {Map<number, Map<string, number>>} */
  const strongest = new Map();
  for (const [, , token, top] of perToken) {
    for (const f of top ?? []) {
      const m = strongest.get(f.feature) ?? new Map();
      m.set(token, Math.max(m.get(token) ?? 0, f.activation));
      strongest.set(f.feature, m);
    }
  }
  const tokensOf = (/** @type {number} */ f) => [...(strongest.get(f) ?? new Map()).entries()].sort((a, b) => b[1] - a[1]).slice(0, 4)
    .map(([t, v]) => `${JSON.stringify(t)} ${v.toFixed(2)}`).join(', ');
  const rows = density.slice(0, LIST_LIMIT).map(([f, d, n], i) => h('tr', { 'data-feature': f },
    h('td', {}, i + 1),
    h('td', {}, h('a', { href: link({ sae, feature: f, model }), 'data-feature-link': f }, `Feature ${f}`)),
    h('td', { 'data-density': d, title: `${n} tokens` }, percent(d)),
    h('td', {}, n),
    h('td', { class: 'tokens-cell' }, tokensOf(f) || '—')));

  const search = /** @type {HTMLInputElement} */ (h('input', { id: 'token-search', type: 'search', placeholder: 'e.g. cat', 'aria-describedby': 'token-search-help' }));
  const found = h('div', { id: 'token-results', 'aria-live': 'polite' });
  const find = () => {
    const want = search.value.trim().toLowerCase();
    if (!want) { found.replaceChildren(); return; }
    /** @type {Map<number, {count: number, max: number, sum: number}>} */
    const byFeature = new Map();
    let occurrences = 0;
    for (const [, , token, top] of perToken) {
      if (String(token).trim().toLowerCase() !== want) continue;
      occurrences++;
      for (const f of top ?? []) {
        const x = byFeature.get(f.feature) ?? { count: 0, max: 0, sum: 0 };
        x.count++; x.max = Math.max(x.max, f.activation); x.sum += f.activation;
        byFeature.set(f.feature, x);
      }
    }
    if (!occurrences) { found.replaceChildren(h('p', {}, `The token ${JSON.stringify(search.value.trim())} does not occur in these texts (tokens are matched whole, ignoring case and surrounding spaces).`)); return; }
    const list = [...byFeature.entries()].sort((a, b) => b[1].count - a[1].count || b[1].max - a[1].max);
    found.replaceChildren(h('p', {}, `${occurrences} occurrence${occurrences === 1 ? '' : 's'} of ${JSON.stringify(search.value.trim())}; the features among their top 3:`),
      h('table', { id: 'token-features' }, h('thead', {}, h('tr', {}, ...['Feature', 'Fires on (of ' + occurrences + ')', 'Max activation', 'Mean activation'].map(c => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, ...list.map(([f, x]) => h('tr', { 'data-feature': f },
          h('td', {}, h('a', { href: link({ sae, feature: f, model }) }, `Feature ${f}`)), h('td', {}, x.count),
          h('td', {}, x.max.toFixed(3)), h('td', {}, (x.sum / x.count).toFixed(3)))))));
  };
  search.addEventListener('input', find);
  return [
    h('h2', {}, 'Features by density'),
    h('p', {}, `${s.texts ?? '?'} texts, ${perToken.length} tokens (BOS left out); ${density.length} features fired on at least one token${density.length > LIST_LIMIT ? `, the ${LIST_LIMIT} densest listed` : ''}. Density: the share of tokens on which the feature's activation is above zero.`),
    h('table', { id: 'feature-list' },
      h('thead', {}, h('tr', {}, ...['Rank', 'Feature', 'Density', 'Tokens', 'Strongest on (tokens where it is among the top 3)'].map(c => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, ...rows)),
    h('h2', {}, 'Search by token'),
    h('label', { for: 'token-search' }, 'Token'), search,
    h('small', { id: 'token-search-help', class: 'help' }, 'Which features fire on a token of these texts: the features among its top 3 at each occurrence.'),
    found,
  ];
}

/** @param {string} sae @param {number} feature @param {string} model */
async function featurePage(sae, feature, model) {
  const gen = nav.generation;
  const texts = savedTexts();
  const note = h('p', { id: 'sae-note', 'aria-live': 'polite' });
  const body = h('div', { id: 'feature-view' });
  const top = /** @type {HTMLInputElement} */ (h('input', { id: 'feature-top', type: 'number', min: 1, max: 100, value: 5 }));
  const again = h('button', { type: 'submit', id: 'feature-rerun' }, 'Show');
  const form = h('form', { id: 'feature-form', class: 'filters' }, h('div', {}, h('label', { for: 'feature-top' }, 'Contexts to show'), top), h('div', {}, again));
  show(h('h1', {}, `Feature ${feature} of ${sae}`),
    h('p', {}, h('a', { href: link({ sae, model }) }, '← All features of this SAE'), ` · ${texts.length} texts (edit them on the browser page)`),
    form, note, body);
  if (!Number.isInteger(feature) || feature < 0) { note.replaceChildren(h('span', { class: 'error', role: 'alert' }, `“${query().get('feature')}” is not a feature number (0 or more).`)); return; }
  const load = async () => {
    body.replaceChildren();
    try {
      const n = Math.max(1, Math.min(100, Number(top.value) || 5));
      const job = await inspect(model, { mode: 'inspect', sae, texts, feature, top: n }, note, 'Inspecting');
      if (!job || gen !== nav.generation) return;
      body.replaceChildren(...featureView(job, sae, feature, model));
    } catch (e) { note.replaceChildren(errorBox(e)); }
  };
  form.addEventListener('submit', ev => { ev.preventDefault(); load(); });
  await load();
}

/** @param {any} job @param {string} sae @param {number} feature @param {string} model */
function featureView(job, sae, feature, model) {
  const s = summary(job);
  const contexts = tableRows(job, 'contexts');   // [text_index, text, [[token, activation], ...]]
  const max = Math.max(1e-9, ...contexts.flatMap(c => c[2].map((/** @type {any[]} */ p) => p[1])));
  const saved = typeof s.saved_log10_density === 'number' ? 10 ** s.saved_log10_density : null;
  const words = (/** @type {string[]|null} */ list, /** @type {string} */ id) => list
    ? h('ol', { id, class: 'token-list' }, ...list.map(t => h('li', { 'data-token': t }, h('code', {}, JSON.stringify(t)))))
    : h('p', { id }, 'Not available: this SAE’s decoder does not write the d_model-wide residual stream (hook_z or per-head SAEs).');
  const q = new URLSearchParams({ sae, feature: String(feature) });
  if (model) q.set('model', model);
  return [
    h('dl', { class: 'info', id: 'feature-facts' },
      h('dt', {}, 'Density on these texts'), h('dd', { id: 'feature-density', 'data-density': s.density }, `${percent(s.density ?? 0)} of tokens (${s.density})`),
      h('dt', {}, 'Density when trained'), h('dd', { id: 'feature-saved-density' }, saved === null ? 'not recorded (no sparsity.safetensors)' : `${percent(saved)} (log10 ${Number(s.saved_log10_density).toFixed(3)})`),
      h('dt', {}, 'Hook'), h('dd', {}, s.sae ?? ''), h('dt', {}, 'Architecture'), h('dd', {}, s.architecture ?? '')),
    h('p', {}, h('a', { id: 'steer-link', href: '#/steer?' + q }, 'Steer with this feature →')),
    h('h2', {}, 'Top-activating contexts'),
    h('p', { class: 'help' }, 'Each token shows its activation under it; the shade (darker = stronger) repeats it. Tokens where the feature is zero are plain.'),
    contexts.length ? h('ol', { id: 'feature-contexts' }, ...contexts.map(([index, text, pairs]) => {
      const peak = Math.max(0, ...pairs.map((/** @type {any[]} */ p) => p[1]));
      return h('li', { 'data-text-index': index, 'data-text': text },
        h('p', { class: 'context-head' }, `Text ${index}, max ${peak.toFixed(3)}`),
        h('p', { class: 'context' }, ...pairs.map(([tok, act], i) => {
          const span = h('span', { class: act > 0 ? 'tok on' : 'tok', 'data-token': tok, 'data-activation': act, 'data-position': i, title: `${JSON.stringify(tok)}: ${act}`, tabindex: act > 0 ? 0 : null },
            h('span', { class: 'tok-text' }, tok), h('span', { class: 'tok-act' }, act > 0 ? act.toFixed(2) : '0'));
          if (act > 0) span.style.backgroundColor = `rgba(214, 98, 20, ${Math.min(1, act / max) * 0.7})`;
          return span;
        })));
    })) : h('p', { id: 'feature-contexts' }, 'No texts.'),
    h('div', { class: 'columns' },
      h('div', {}, h('h2', {}, 'Promotes'), words(s.promotes ?? null, 'feature-promotes')),
      h('div', {}, h('h2', {}, 'Suppresses'), words(s.suppresses ?? null, 'feature-suppresses'))),
  ];
}
