// @ts-check
// InterpMesh web console (docs/console.md): plain ES modules, no dependencies, no build step.
// It talks to the gateway's REST routes (docs/rest.md) on this origin with the API key the user
// typed, kept in sessionStorage and sent only in the Authorization header (never in URLs or logs).
// app.js: the router; each page lives in its own module.
import { KEY, nav, statusLine, show, errorBox } from './core.js';
import { keyPage } from './key.js';
import { jobsPage, jobPage } from './jobs.js';
import { runPage } from './run.js';
import { modelPage } from './explorer.js';
import { saePage } from './sae.js';
import { steerPage } from './steer.js';

// ---------------------------------------------------------------- router

async function route() {
  nav.generation++;
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
    else if (page === 'sae') await saePage();
    else if (page === 'steer') await steerPage();
    else await jobsPage();
  } catch (e) { show(errorBox(e)); }
}

window.addEventListener('hashchange', route);
route();
