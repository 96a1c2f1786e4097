// @ts-check
import { KEY, api, h, show, errorBox } from './core.js';

// ---------------------------------------------------------------- key page

export function keyPage() {
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
