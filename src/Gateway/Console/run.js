// @ts-check
import { ApiError, json, h, show, errorBox, nav } from './core.js';

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

/** The fields of an object schema (without the discriminator). @param {any} schema @param {string} [skip] */
function fieldsOf(schema, skip) {
  const required = new Set(schema.required ?? []);
  return Object.entries(schema.properties ?? {}).filter(([name]) => name !== skip).map(([name, s]) => field(s, name, required.has(name)));
}

/**
 * The modes of a polymorphic schema: its anyOf/oneOf branches when every branch fixes one and the
 * same property with `const` (as the SDK's `[JsonPolymorphic]` parameters are exported); else null.
 * @param {any} schema
 * @returns {{property: string, description?: string, fallback?: string, forms: {value: string, schema: any}[]} | null}
 */
function modesOf(schema) {
  const branches = schema.oneOf ?? schema.anyOf;
  if (!Array.isArray(branches) || branches.length === 0) return null;
  const first = branches[0]?.properties ?? {};
  const property = Object.keys(first).find(k => first[k] && 'const' in first[k]
    && branches.every((/** @type {any} */ b) => b?.properties?.[k] && 'const' in b.properties[k]));
  if (!property) return null;
  const forms = branches.map((/** @type {any} */ b) => ({ value: String(b.properties[property].const), schema: b }));
  const fallback = forms.find(f => f.schema.properties[property].default !== undefined)?.value ?? schema.properties?.[property]?.default;
  return { property, description: schema.properties?.[property]?.description, fallback, forms };
}

export async function runPage() {
  const gen = nav.generation;
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
  if (gen !== nav.generation) return;
  for (const p of plugins) pluginSelect.append(h('option', { value: p.id, disabled: !p.loaded }, p.loaded ? p.id : `${p.id} (not loaded: ${p.error})`));
  const wanted = new URLSearchParams(location.hash.split('?')[1] ?? '').get('plugin');
  if (wanted) pluginSelect.value = wanted;
  const build = () => {
    const p = plugins.find((/** @type {any} */ x) => x.id === pluginSelect.value);
    formError.replaceChildren();
    if (!p) { fields.replaceChildren(); return; }
    about.textContent = `${p.description} (version ${p.version})`;
    try { schema = JSON.parse(p.parameterSchemaJson || '{}'); } catch { schema = {}; }
    const modes = modesOf(schema);
    if (!modes) {
      form.dataset.mode = '';
      fields.replaceChildren(...fieldsOf(schema));
      return;
    }
    // One form per mode (anyOf/oneOf whose branches fix a discriminator with `const`): a selector
    // for the mode, then the chosen branch's own fields.
    const id = `param-${modes.property}`;
    const select = /** @type {HTMLSelectElement} */ (h('select', { id, name: modes.property, 'data-mode-selector': 'true', 'aria-describedby': `${id}-help ${id}-error` },
      ...modes.forms.map(f => h('option', { value: f.value, selected: f.value === modes.fallback }, f.value === modes.fallback ? `${f.value} (default)` : f.value))));
    const branch = h('div', { id: 'mode-fields' });
    const pick = () => {
      const f = modes.forms.find(x => x.value === select.value) ?? modes.forms[0];
      form.dataset.mode = f.value;
      branch.replaceChildren(...fieldsOf(f.schema, modes.property));
    };
    select.addEventListener('change', pick);
    fields.replaceChildren(h('div', { class: 'field', 'data-field': modes.property },
      h('label', { for: id }, modes.property), select,
      h('small', { id: `${id}-help` }, modes.description ?? `Which analysis; each ${modes.property} has its own parameters.`),
      h('p', { class: 'field-error', id: `${id}-error`, role: 'alert', 'data-error-for': modes.property })), branch);
    const wantedMode = new URLSearchParams(location.hash.split('?')[1] ?? '').get(modes.property);
    if (wantedMode && modes.forms.some(f => f.value === wantedMode)) select.value = wantedMode;
    pick();
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
        if (c.dataset.modeSelector) { parameters[c.name] = c.value; continue; }
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
      const names = [...fields.querySelectorAll('[data-field]')].map(f => /** @type {HTMLElement} */ (f).dataset.field ?? '').sort((a, b) => b.length - a.length);
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
