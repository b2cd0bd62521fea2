// Rules: the run's live rules (status, how often each acted and at which step, its last error) with pause, resume
// and remove, and a form to add one; the built-in examples (from GET kinds) fill the form. A rule's code is like a
// metric's and may act through set(...), pause(...), stop(...), snapshot(), rewind(...) (see `bidviz rule add`).

import {errorText} from './api.js';
import {el, formatValue, section} from './dom.js';
import {attachCodeEditing} from './metrics.js';

export class RulesPanel {
  constructor(app) {
    this.app = app;
    this.list = el('tbody', {testid: 'rule-list'});
    this.empty = el('p', {class: 'muted', text: 'No rules. A rule runs every Nth step and may act: set(lr=…), pause(…), stop(…), snapshot(), rewind().'});
    this.name = el('input', {type: 'text', testid: 'rule-name', placeholder: 'name, e.g. halve_on_spike'});
    this.code = el('textarea', {
      testid: 'rule-code',
      class: 'code',
      rows: 4,
      spellcheck: false,
      placeholder: "if metrics['gnorm'] > 10:\n    set(lr=hparams['lr'] / 2)",
    });
    attachCodeEditing(this.code);
    this.every = el('input', {type: 'number', testid: 'rule-every', min: '1', value: '1', class: 'every'});
    this.cooldown = el('input', {type: 'number', testid: 'rule-cooldown', min: '1', value: '100', class: 'every'});
    this.examples = el('select', {testid: 'rule-example', onchange: () => this.useExample()}, el('option', {value: '', text: 'examples…'}));
    this.status = el('div', {class: 'inline-msg', testid: 'rule-status'});
    this.element = section(
      'Rules',
      'rules',
      el(
        'table',
        {class: 'grid'},
        el('thead', {}, el('tr', {}, ['Rule', 'Status', 'Acted', 'Last', ''].map((h) => el('th', {text: h})))),
        this.list,
      ),
      this.empty,
      el(
        'div',
        {class: 'add-form'},
        el('h3', {text: 'Add a rule'}),
        el(
          'div',
          {class: 'form-row'},
          el('label', {}, 'Name ', this.name),
          el('label', {}, 'every ', this.every, ' steps'),
          el('label', {}, 'rest ', this.cooldown, ' steps after acting'),
          this.examples,
        ),
        this.code,
        el('div', {class: 'form-row'}, el('button', {testid: 'rule-add', text: 'Add rule', onclick: () => this.add()})),
        this.status,
      ),
    );
    this.known = [];
  }

  setKinds(table) {
    const examples = (table && table.rule_examples) || {};
    this.exampleCode = examples;
    this.examples.replaceChildren(
      el('option', {value: '', text: 'examples…'}),
      ...Object.keys(examples).map((n) => el('option', {value: n, text: n})),
    );
  }

  useExample() {
    const name = this.examples.value;
    if (!name) return;
    this.name.value = name;
    this.code.value = this.exampleCode[name];
  }

  async send(kind, args, done) {
    this.status.className = 'inline-msg';
    this.status.textContent = `${kind}…`;
    try {
      const resp = await this.app.send(kind, args);
      if (resp.status === 'applied') {
        this.status.textContent = done(resp);
      } else {
        this.status.className = 'inline-msg error';
        this.status.textContent = errorText(resp.error) || resp.status;
      }
    } catch (e) {
      this.status.className = 'inline-msg error';
      this.status.textContent = e.message;
    }
    this.app.refreshSoon();
  }

  add() {
    const args = {
      name: this.name.value.trim(),
      code: this.code.value,
      every: Number(this.every.value) || 1,
      cooldown: Number(this.cooldown.value) || 100,
      replace: this.known.includes(this.name.value.trim()),
    };
    this.send('add_rule', args, (resp) => `rule ${args.name} added at step ${resp.step ?? '–'}`);
  }

  update(state) {
    const rules = (state && state.rules) || {};
    this.known = Object.keys(rules);
    this.empty.hidden = this.known.length > 0;
    this.list.replaceChildren(
      ...Object.entries(rules).map(([name, r]) => {
        const running = r.status === 'running';
        const error = r.last_error ? `${r.last_error.type}: ${r.last_error.message}` : '';
        return el(
          'tr',
          {testid: `rule-row-${name}`, class: r.status === 'disabled' ? 'failed' : ''},
          el('td', {class: 'mono clip', text: name, title: r.code}),
          el('td', {testid: `rule-state-${name}`, text: r.status, title: error}),
          el('td', {class: 'num', testid: `rule-fired-${name}`, text: String(r.fired ?? 0)}),
          el('td', {class: 'mono clip', text: (r.last_actions || []).join('; ') || error || '–', title: `step ${formatValue(r.last_fired)}`}),
          el(
            'td',
            {class: 'actions'},
            el('button', {
              class: 'secondary',
              testid: `rule-toggle-${name}`,
              text: running ? 'pause' : 'resume',
              onclick: () => this.send(running ? 'pause_rule' : 'resume_rule', {name}, () => `rule ${name} ${running ? 'paused' : 'resumed'}`),
            }),
            el('button', {
              class: 'secondary',
              testid: `rule-remove-${name}`,
              text: 'remove',
              onclick: () => this.send('remove_rule', {name}, () => `rule ${name} removed`),
            }),
          ),
        );
      }),
    );
  }

  setEnabled(enabled) {
    for (const b of this.element.querySelectorAll('button')) b.disabled = !enabled;
  }
}
