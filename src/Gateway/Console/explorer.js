// @ts-check
import { ApiError, api, json, h, show, errorBox, bytes, decode, nav } from './core.js';
import { runJob, jobLine, tableRows } from './tools.js';

// ---------------------------------------------------------------- model explorer

/**
 * Runs the model on a prompt capturing one layer's attention pattern; answers the token ids, their
 * texts and the pattern as [head][query][key] arrays.
 * @param {string} model @param {string} prompt @param {number} layer
 */
export async function attention(model, prompt, layer) {
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
export function grid(layer, head, texts, rows) {
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

export async function modelPage() {
  const gen = nav.generation;
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
  const answer = /** @type {HTMLInputElement} */ (h('input', { id: 'lens-answer', type: 'text', 'aria-describedby': 'lens-answer-help' }));
  answer.value = new URLSearchParams(location.hash.split('?')[1] ?? '').get('answer') ?? '';
  const lensNote = h('div', { 'aria-live': 'polite' });
  const lens = h('div', { id: 'lens' });
  const lensForm = h('form', { id: 'lens-form' },
    h('label', { for: 'lens-answer' }, 'Answer token'), answer,
    h('small', { id: 'lens-answer-help' }, 'One token the prompt should predict next (as the tokenizer writes it, e.g. " Paris" with its space for GPT-2); each cell shows its probability.'),
    h('div', {}, h('button', { type: 'submit', id: 'show-lens' }, 'Logit lens')));
  show(h('h1', {}, 'Model explorer'),
    h('label', { for: 'model-name' }, 'Model'), modelInput, ' ', load,
    info, h('h2', {}, 'Tokens and attention'), form, note, tokens, heads,
    h('h2', {}, 'Logit lens'),
    h('p', {}, 'The residual stream after each layer read through the model’s own final norm and unembedding (the circuits plugin’s logit_lens job on the prompt above): per layer and position, the top token and the answer’s probability.'),
    lensForm, lensNote, lens);
  lensForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    lens.replaceChildren();
    try {
      const job = await runJob('circuits', modelInput.value.trim(), { mode: 'logit_lens', pairs: [{ clean: prompt.value, answer: answer.value }], top_k: 3 },
        j => lensNote.replaceChildren(jobLine(j, 'Logit lens')));
      if (!job || gen !== nav.generation) return;
      lens.replaceChildren(lensGrid(tableRows(job, 'logit_lens')));
      lensNote.append(' ', h('span', { id: 'lens-done' }, 'Rows: layers (embed = before the first block); columns: positions.'));
    } catch (e) { lensNote.replaceChildren(errorBox(e)); }
  });
  const loadInfo = async () => {
    try {
      const mi = await json('GET', '/v1/model/info', undefined, modelInput.value.trim());
      if (gen !== nav.generation) return;
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
      if (gen !== nav.generation) return;
      tokens.replaceChildren(h('p', {}, 'Tokens: '), h('ol', { class: 'tokens', start: 0 }, ...a.ids.map((id, i) => h('li', { 'data-token': id }, `${JSON.stringify(a.texts[i] ?? '')} (id ${id})`))));
      heads.replaceChildren(...a.pattern.map((rows, hd) => grid(l, hd, a.texts, rows)));
      note.replaceChildren(h('span', { id: 'attention-done' }, `Layer ${l}: ${a.pattern.length} heads, ${a.ids.length} tokens. Each cell is the weight from the row's query token to the column's key token.`));
    } catch (e) { note.replaceChildren(errorBox(e)); }
  });
  await loadInfo();
}

/**
 * The logit lens table (rows [pair, layer, hook, position, token, top_tokens, top_ids, top_logit,
 * answer_logit, answer_prob, answer_rank]) as a layer × position grid: each cell the top token and
 * the answer's probability, as text and as a shade.
 * @param {any[][]} rows
 */
function lensGrid(rows) {
  const layers = [...new Set(rows.map(r => Number(r[1])))].sort((a, b) => a - b);
  const positions = [...new Set(rows.map(r => Number(r[3])))].sort((a, b) => a - b);
  /** @type {Map<string, any[]>} */
  const at = new Map(rows.map(r => [`${r[1]}:${r[3]}`, r]));
  const label = (/** @type {number} */ l) => l < 0 ? 'embed' : `L${l}`;
  return h('table', { class: 'grid lens' },
    h('caption', {}, 'Logit lens: top token and P(answer) per layer and position'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'layer'),
      ...positions.map(p => h('th', { scope: 'col' }, String(at.get(`${layers[0]}:${p}`)?.[4] ?? p))))),
    h('tbody', {}, ...layers.map(l => h('tr', {}, h('th', { scope: 'row' }, label(l)),
      ...positions.map(p => {
        const r = at.get(`${l}:${p}`);
        if (!r) return h('td', {}, '');
        const prob = Number(r[9]);
        const top = String(r[5] ?? '').split(' | ')[0];
        const td = h('td', { 'data-layer': l, 'data-position': p, 'data-prob': prob, 'data-top': top, 'data-rank': r[10],
          title: `${label(l)}, position ${p}: top ${r[5]}; P(answer) ${prob}, rank ${r[10]}` },
          h('span', { class: 'lens-top' }, JSON.stringify(top)), h('br'), prob.toFixed(3));
        td.style.backgroundColor = `rgba(5, 80, 174, ${Math.min(1, Math.max(0, prob)) * 0.85})`;
        if (prob > 0.5) td.style.color = '#fff';
        return td;
      })))));
}
