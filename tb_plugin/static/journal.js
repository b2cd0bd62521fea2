// The journal as people read it: step, time, who (login name and client), what (the kinds table's label) and the
// outcome the server worked out (`lr 0.1 → 0.03`, `paused`, `series bidviz/gnorm`, an eval's value, an error).
// One function renders an entry, so a column of actions (an undo button beside an entry) is added in one place.

import {el} from './dom.js';

export function journalText(e) {
  if (e.event === 'command') {
    return {what: e.label || e.kind, result: e.outcome ?? (e.status === 'applied' ? e.repr ?? 'ok' : e.status)};
  }
  // A guard trip, a rewind, a rule that acted: the bridge's own label says what happened.
  const what = e.label || `${e.event.replace(/_/g, ' ')} ${e.metric || e.rule || ''}`.trim();
  return {what, result: (e.error && `${e.error.type}: ${e.error.message}`) || e.reason || ''};
}

// One <tr> of the journal table. `actions(entry)` may return elements for a last column (none by default).
export function journalRow(e, actions = null) {
  const {what, result} = journalText(e);
  const text = String(result);
  const cls = e.status && e.status !== 'applied' ? 'failed' : e.event !== 'command' ? 'event' : '';
  return el(
    'tr',
    {class: cls, testid: e.id ? `journal-${e.id}` : null},
    el('td', {class: 'num', text: e.step ?? '–'}),
    el('td', {class: 'nowrap', text: e.time ? new Date(e.time * 1000).toLocaleTimeString([], {hour12: false}) : ''}),
    el('td', {class: 'who', text: e.event === 'command' ? e.who || e.sender || '' : 'bridge'}),
    el('td', {class: 'mono', title: what}, el('div', {class: 'clamp', text: what})),
    el('td', {class: 'mono', testid: 'journal-result', title: text.slice(0, 2000)}, el('div', {class: 'clamp', text: text.slice(0, 300)})),
    actions ? el('td', {class: 'actions'}, actions(e)) : null,
  );
}

// Newest first; `entries` oldest first as the routes send them. Bridge bookkeeping lines are left out.
export function renderJournal(tbody, entries, actions = null) {
  const shown = entries.filter((e) => e.event !== 'applying' && e.event !== 'checkpoint');
  tbody.replaceChildren(...shown.slice().reverse().map((e) => journalRow(e, actions)));
}
