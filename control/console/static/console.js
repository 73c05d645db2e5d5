// The console's only script (no build step, no dependency). It refreshes the page's live region
// every data-refresh-ms by fetching the same URL with `x-tether-fragment: 1` (the server renders
// and escapes it), shows when that last worked, and turns buttons with data-action into POSTs to
// /console/actions/<action>: asked for confirmation first, sent as JSON with the session's CSRF
// token (from <meta name="tether-csrf">) in the x-tether-csrf header.
'use strict';
(function () {
  const live = document.getElementById('live');
  if (live === null) return;
  const csrfMeta = document.querySelector('meta[name="tether-csrf"]');
  const csrf = csrfMeta === null ? '' : csrfMeta.getAttribute('content') || '';
  const updated = document.getElementById('updated');
  const state = document.getElementById('live-state');
  const flash = document.getElementById('flash');
  const interval = Math.max(250, Number(live.dataset.refreshMs) || 2000);
  let timer = null;
  let inFlight = false;
  let stopped = false;

  function setState(text, failed) {
    if (state === null) return;
    state.textContent = text;
    state.classList.toggle('failed', failed);
  }

  function say(text, failed) {
    if (flash === null) return;
    flash.textContent = text;
    flash.hidden = false;
    flash.classList.toggle('failed', failed);
  }

  async function refresh() {
    if (inFlight || stopped) return;
    inFlight = true;
    try {
      const response = await fetch(location.pathname + location.search, {
        headers: { 'x-tether-fragment': '1' },
        credentials: 'same-origin',
        cache: 'no-store',
      });
      if (response.status === 401) {
        stopped = true;
        setState('session ended: log in again at /console/login', true);
        return;
      }
      const text = await response.text();
      if (response.ok || response.status === 403 || response.status === 404) {
        live.innerHTML = text;
        const now = new Date();
        if (updated !== null) {
          updated.textContent = now.toISOString().replace('T', ' ').replace(/\.\d{3}Z$/, 'Z');
          updated.setAttribute('datetime', now.toISOString());
        }
        setState('live: refreshes every ' + interval / 1000 + ' s', false);
      } else {
        setState('refresh failed: HTTP ' + response.status + ' (retrying)', true);
      }
    } catch (error) {
      setState('refresh failed: ' + (error instanceof Error ? error.message : String(error)) + ' (retrying)', true);
    } finally {
      inFlight = false;
    }
  }

  function schedule() {
    if (stopped) return;
    timer = setTimeout(async function tick() {
      timer = null;
      if (document.visibilityState !== 'hidden') await refresh();
      schedule();
    }, interval);
  }

  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible') void refresh();
  });

  document.addEventListener('click', async function (event) {
    const target = event.target instanceof Element ? event.target.closest('button[data-action]') : null;
    if (target === null) return;
    event.preventDefault();
    const question = target.getAttribute('data-confirm');
    if (question !== null && !window.confirm(question)) return;
    target.disabled = true;
    const action = target.getAttribute('data-action');
    try {
      const response = await fetch('/console/actions/' + encodeURIComponent(action), {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'content-type': 'application/json', 'x-tether-csrf': csrf },
        body: target.getAttribute('data-body') || '{}',
      });
      let result = {};
      try {
        result = await response.json();
      } catch (error) {
        result = {};
      }
      if (response.ok) say(action + ': done', false);
      else say(action + ' refused: ' + (result.code || 'HTTP ' + response.status) + (result.message ? ' (' + result.message + ')' : ''), true);
    } catch (error) {
      say(action + ' failed: ' + (error instanceof Error ? error.message : String(error)), true);
    } finally {
      target.disabled = false;
    }
    await refresh();
  });

  window.addEventListener('pagehide', function () {
    stopped = true;
    if (timer !== null) clearTimeout(timer);
  });

  schedule();
})();
