// @ts-check
// steer.js: the steering playground (#/steer, #/steer?sae=NAME&feature=F). A vector — a steering
// vector or function vector artifact of the steering plugin, or an SAE latent's decoder row (the sae
// plugin's export_direction job saves it as a steering vector) — is added, times a coefficient, to
// blocks.L.hook_resid_post at every position; two greedy generations of the same prompt, without and
// with it, stream side by side from POST /v1/model/generate, with the steered one's receipt.
import { h, show, errorBox, nav, json, artifact, stream } from './core.js';
import { runJob, jobLine, summary, listArtifacts, isSae, metadataOf, safetensors, float32Base64 } from './tools.js';

const VECTOR_KINDS = new Set(['interpmesh.steering_vector', 'interpmesh.function_vector']);

/** Vectors read in this tab, by artifact name. @type {Map<string, Map<string, {shape: number[], values: Float32Array}>>} */
const vectors = new Map();
/** Exported SAE directions of this tab: "sae#feature" → vector artifact name. @type {Map<string, string>} */
const exported = new Map();

/** @returns {URLSearchParams} */
function query() { return new URLSearchParams(location.hash.split('?')[1] ?? ''); }

/** The layer a tensor name ends with (mean_diff.3 → 3). @param {string} name */
function layerOf(name) { const m = /\.(\d+)$/.exec(name); return m ? Number(m[1]) : null; }

/** @param {string} name */
async function tensorsOf(name) {
  let t = vectors.get(name);
  if (!t) {
    const { files } = await artifact(name);
    const file = files.get('tensors.safetensors');
    if (!file) throw new Error(`artifact ${name} has no tensors.safetensors; pick a steering or function vector`);
    t = safetensors(file);
    vectors.set(name, t);
  }
  return t;
}

/** @param {Float32Array} v */
function norm(v) { let s = 0; for (const x of v) s += x * x; return Math.sqrt(s); }

export async function steerPage() {
  const gen = nav.generation;
  const q = query();
  const modelInput = /** @type {HTMLInputElement} */ (h('input', { id: 'steer-model', type: 'text', placeholder: 'the gateway’s default model', value: q.get('model') ?? '' }));
  const prompt = /** @type {HTMLTextAreaElement} */ (h('textarea', { id: 'steer-prompt', rows: 2 }));
  prompt.value = q.get('prompt') ?? 'Once upon a time';
  const source = /** @type {HTMLSelectElement} */ (h('select', { id: 'vector-source' },
    h('option', { value: 'sae' }, 'An SAE feature'), h('option', { value: 'artifact' }, 'A steering or function vector artifact')));
  const saeSelect = /** @type {HTMLSelectElement} */ (h('select', { id: 'steer-sae' }));
  const featureInput = /** @type {HTMLInputElement} */ (h('input', { id: 'steer-feature', type: 'number', min: 0, step: 1, value: q.get('feature') ?? '0' }));
  const artifactSelect = /** @type {HTMLSelectElement} */ (h('select', { id: 'steer-artifact' }));
  const tensorSelect = /** @type {HTMLSelectElement} */ (h('select', { id: 'steer-tensor' }));
  const layer = /** @type {HTMLSelectElement} */ (h('select', { id: 'steer-layer' }));
  const coefficient = /** @type {HTMLInputElement} */ (h('input', { id: 'steer-coefficient', type: 'range', min: -50, max: 50, step: 0.5, value: q.get('coefficient') ?? '8', 'aria-describedby': 'steer-coefficient-help' }));
  const coefficientValue = /** @type {HTMLInputElement} */ (h('input', { id: 'steer-coefficient-value', type: 'number', step: 'any', value: coefficient.value, 'aria-label': 'Coefficient (exact value)' }));
  const maxTokens = /** @type {HTMLInputElement} */ (h('input', { id: 'steer-max-tokens', type: 'number', min: 1, max: 512, value: q.get('max') ?? '20' }));
  const vectorNote = h('p', { id: 'vector-note', 'aria-live': 'polite' });
  const note = h('p', { id: 'steer-note', 'aria-live': 'polite' });
  const plain = h('div', { class: 'generation', id: 'unsteered' });
  const steered = h('div', { class: 'generation', id: 'steered' });
  const receipt = h('div', { id: 'steer-receipt' });
  const go = h('button', { type: 'submit', id: 'steer-generate' }, 'Generate');
  const saeFields = h('fieldset', { id: 'sae-source' }, h('legend', {}, 'SAE feature'),
    h('label', { for: 'steer-sae' }, 'SAE artifact'), saeSelect, h('label', { for: 'steer-feature' }, 'Feature'), featureInput,
    h('small', { class: 'help' }, 'Its decoder row, saved as a steering vector by the sae plugin’s export_direction job (SAEs writing blocks.L.hook_resid_post).'));
  const artifactFields = h('fieldset', { id: 'artifact-source' }, h('legend', {}, 'Vector artifact'),
    h('label', { for: 'steer-artifact' }, 'Artifact'), artifactSelect, h('label', { for: 'steer-tensor' }, 'Tensor'), tensorSelect);
  const form = h('form', { id: 'steer-form' },
    h('label', { for: 'steer-model' }, 'Model'), modelInput,
    h('label', { for: 'steer-prompt' }, 'Prompt'), prompt,
    h('label', { for: 'vector-source' }, 'Steering vector from'), source, saeFields, artifactFields, vectorNote,
    h('label', { for: 'steer-layer' }, 'Layer (added to blocks.L.hook_resid_post at every position)'), layer,
    h('label', { for: 'steer-coefficient' }, 'Coefficient'), h('div', { class: 'slider' }, coefficient, coefficientValue),
    h('small', { id: 'steer-coefficient-help', class: 'help' }, 'The vector is multiplied by this before it is added; negative values subtract it.'),
    h('label', { for: 'steer-max-tokens' }, 'New tokens'), maxTokens,
    h('div', {}, go));
  show(h('h1', {}, 'Steering playground'), form, note,
    h('div', { class: 'columns' },
      h('section', { 'aria-labelledby': 'unsteered-title' }, h('h2', { id: 'unsteered-title' }, 'Without the vector'), plain),
      h('section', { 'aria-labelledby': 'steered-title' }, h('h2', { id: 'steered-title' }, 'With the vector'), steered)),
    receipt);

  coefficient.addEventListener('input', () => { coefficientValue.value = coefficient.value; });
  coefficientValue.addEventListener('input', () => { if (coefficientValue.value !== '') coefficient.value = coefficientValue.value; });
  const sync = () => { saeFields.hidden = source.value !== 'sae'; artifactFields.hidden = source.value !== 'artifact'; };
  source.addEventListener('change', sync);

  let nLayers = 0, layerPicked = false;
  layer.addEventListener('change', () => { layerPicked = true; });
  try {
    const [info, artifacts] = await Promise.all([json('GET', '/v1/model/info', undefined, modelInput.value.trim()), listArtifacts()]);
    if (gen !== nav.generation) return;
    nLayers = info.nLayers ?? 0;
    layer.replaceChildren(...Array.from({ length: nLayers }, (_, i) => h('option', { value: i }, String(i))));
    const saes = artifacts.filter(isSae);
    saeSelect.replaceChildren(...(saes.length ? saes.map(a => h('option', { value: a.name }, a.name)) : [h('option', { value: '' }, 'no SAE artifacts')]));
    const vecs = artifacts.filter(a => VECTOR_KINDS.has(metadataOf(a).kind));
    artifactSelect.replaceChildren(...(vecs.length
      ? vecs.map(a => h('option', { value: a.name }, `${a.name} (${metadataOf(a).kind === 'interpmesh.function_vector' ? 'function vector' : 'steering vector'})`))
      : [h('option', { value: '' }, 'no vector artifacts')]));
    const sae0 = q.get('sae'), vec0 = q.get('vector');
    if (sae0 && saes.some(a => a.name === sae0)) saeSelect.value = sae0;
    if (vec0 && vecs.some(a => a.name === vec0)) { artifactSelect.value = vec0; source.value = 'artifact'; }
    else if (!sae0 && !saes.length && vecs.length) source.value = 'artifact';
  } catch (e) { note.replaceChildren(errorBox(e)); return; }
  sync();

  /** Lists the chosen artifact's tensors and sets the layer from the first. */
  const loadTensors = async () => {
    tensorSelect.replaceChildren();
    if (!artifactSelect.value) return;
    try {
      const t = await tensorsOf(artifactSelect.value);
      tensorSelect.replaceChildren(...[...t.keys()].map(n => h('option', { value: n }, `${n} (norm ${norm(/** @type {any} */ (t.get(n)).values).toFixed(3)})`)));
      setLayer(tensorSelect.value);
    } catch (e) { vectorNote.replaceChildren(errorBox(e)); }
  };
  /** @param {string} tensor */
  const setLayer = (tensor) => { const l = layerOf(tensor); if (l !== null && l < nLayers) layer.value = String(l); };
  artifactSelect.addEventListener('change', loadTensors);
  tensorSelect.addEventListener('change', () => setLayer(tensorSelect.value));
  if (source.value === 'artifact') await loadTensors();

  /** The vector to add (d_model values), where it came from, and its layer. */
  const resolve = async () => {
    const model = modelInput.value.trim();
    if (source.value === 'sae') {
      const sae = saeSelect.value, feature = Number(featureInput.value);
      if (!sae) throw new Error('Pick an SAE artifact (none listed: train one with the sae plugin).');
      if (!Number.isInteger(feature) || feature < 0) throw new Error(`“${featureInput.value}” is not a feature number (0 or more).`);
      const key = `${model}|${sae}#${feature}`;
      let name = exported.get(key);
      if (!name) {
        const job = await runJob('sae', model, { mode: 'export_direction', sae, feature, save_as: `steering/console/${sae}/feature-${feature}` },
          j => vectorNote.replaceChildren(jobLine(j, `Exporting feature ${feature}’s decoder row`)));
        if (!job) return null;
        name = String(summary(job).vector);
        exported.set(key, name);
      }
      const t = await tensorsOf(name);
      const [tensor] = [...t.keys()];
      return { name, tensor, values: /** @type {any} */ (t.get(tensor)).values, layer: layerOf(tensor) };
    }
    const name = artifactSelect.value;
    if (!name) throw new Error('Pick a vector artifact (none listed: extract one with the steering plugin).');
    const t = await tensorsOf(name);
    const tensor = tensorSelect.value || [...t.keys()][0];
    const v = t.get(tensor);
    if (!v) throw new Error(`artifact ${name} has no tensor ${tensor}`);
    return { name, tensor, values: v.values, layer: layerOf(tensor) };
  };

  /** A generation column: the prompt, then each token as it arrives. @param {HTMLElement} column @param {string} what */
  const column = (column, what) => {
    const state = h('p', { class: 'generation-state', 'aria-live': 'polite' }, `${what}: starting…`);
    const out = h('span', { class: 'generated' });
    column.replaceChildren(state, h('p', { class: 'generation-text' }, h('span', { class: 'prompt-text' }, prompt.value), out));
    let count = 0;
    return {
      /** @param {any} m */
      take(m) {
        if (!m.tokenIds?.length) return;
        if (m.tokenIds[0] >= 0) { out.append(h('span', { class: 'gen-token', 'data-token-id': m.tokenIds[0], title: `token ${m.tokenIds[0]}` }, m.texts?.[0] ?? '')); count++; }
        state.textContent = m.final ? `${what}: done, ${count} new tokens.` : `${what}: generating… ${count} tokens so far.`;
        if (m.final) column.setAttribute('data-done', 'true');
      },
      /** @param {unknown} e */
      fail(e) { state.replaceChildren(errorBox(e)); },
      text() { return out.textContent ?? ''; },
    };
  };

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    note.replaceChildren(); receipt.replaceChildren(); plain.replaceChildren(); steered.replaceChildren();
    plain.removeAttribute('data-done'); steered.removeAttribute('data-done');
    const c = Number(coefficientValue.value), n = Number(maxTokens.value);
    if (!Number.isFinite(c)) { note.replaceChildren(h('span', { class: 'error', role: 'alert' }, 'The coefficient must be a number.')); return; }
    if (!Number.isInteger(n) || n < 1) { note.replaceChildren(h('span', { class: 'error', role: 'alert' }, 'New tokens must be a whole number, at least 1.')); return; }
    if (!prompt.value) { note.replaceChildren(h('span', { class: 'error', role: 'alert' }, 'Enter a prompt.')); return; }
    let vector;
    try {
      vector = await resolve();
      if (!vector || gen !== nav.generation) return;
    } catch (e) { vectorNote.replaceChildren(errorBox(e)); return; }
    // The vector's own layer unless the user picked another.
    if (vector.layer !== null && !layerPicked && vector.layer < nLayers) layer.value = String(vector.layer);
    const at = Number(layer.value);
    const hook = `blocks.${at}.hook_resid_post`;
    const scaled = new Float32Array(vector.values.length);
    vector.values.forEach((x, i) => { scaled[i] = c * x; });
    vectorNote.replaceChildren(h('span', { id: 'vector-ready', 'data-vector': vector.name, 'data-tensor': vector.tensor },
      `Vector ${vector.name} (${vector.tensor}, ${vector.values.length} values, norm ${norm(vector.values).toFixed(4)}) × ${c} added at ${hook}${vector.layer !== null && vector.layer !== at ? ` (it was measured at layer ${vector.layer})` : ''}.`));
    const model = modelInput.value.trim();
    const base = { prompts: [{ text: prompt.value }], maxNewTokens: n };
    const steer = { ...base, interventions: [{ hook, op: 'INTERVENTION_OP_ADD', value: { shape: [scaled.length], dtype: 'DTYPE_FLOAT32', data: float32Base64(scaled) } }] };
    const a = column(plain, 'Without the vector'), b = column(steered, `With ${c} × the vector`);
    /** @type {any[]} */
    let receipts = [];
    await Promise.all([
      stream('POST', '/v1/model/generate', base, model, m => a.take(m)).catch(e => a.fail(e)),
      stream('POST', '/v1/model/generate', steer, model, m => { b.take(m); if (m.final) receipts = m.receipts ?? []; }).catch(e => b.fail(e)),
    ]);
    if (gen !== nav.generation) return;
    const r = receipts[0];
    if (r) {
      receipt.replaceChildren(h('h2', {}, 'Intervention receipt (steered generation)'),
        h('dl', { class: 'info', id: 'receipt', 'data-elements': r.elementsChanged ?? 0, 'data-norm': r.l2Norm ?? 0 },
          h('dt', {}, 'Hook'), h('dd', {}, `${r.hook} (matched ${(r.matchedHooks ?? []).join(', ') || 'nothing'})`),
          h('dt', {}, 'Elements changed'), h('dd', { id: 'receipt-elements' }, String(r.elementsChanged ?? 0)),
          h('dt', {}, 'L2 norm of the change'), h('dd', { id: 'receipt-norm' }, `${Number(r.l2Norm ?? 0).toFixed(4)} (summed over steps)`)),
        Number(r.elementsChanged ?? 0) === 0 ? h('p', { class: 'warning' }, 'The vector changed nothing (a zero coefficient or vector).') : '');
    }
    note.replaceChildren(h('span', { id: 'steer-done' }, a.text() === b.text() ? 'Done: the two generations are the same.' : 'Done: the vector changed the generation.'));
  });
}
