"""The page's own CSS and script (passed to `launch(css=..., head=...)`).

The script does what Gradio components cannot: it puts each field's validation
message under the field (read from the Errors panel's `data-fields` JSON, so
the text is config_validate's), makes the Errors panel's links open the field's
section and scroll to it, and keeps the log tail at its end.
"""

CSS = """
.ls-error, .ls-field-error { color: #c0392b; font-weight: 600; }
.ls-warning, .ls-field-warning { color: #b9770e; }
.ls-field-msg { font-size: 0.85em; margin: 4px 2px 0 2px; line-height: 1.25; }
.ls-has-error input, .ls-has-error textarea { outline: 2px solid #c0392b; }
.ls-ok { color: #1e8449; }
.ls-stale { color: #7f8c8d; font-style: italic; }
#ls-run-panel { position: sticky !important; top: 6px; align-self: flex-start !important;
                max-height: calc(100vh - 12px); overflow-y: auto !important; }
/* sticky needs every ancestor to let it overflow */
.gradio-container, .gradio-container main, .contain, .tabs, .tabitem, .tab-wrapper, #ls-main,
.gradio-container .column, .gradio-container .wrap { overflow: visible !important; }
#ls-main { align-items: flex-start; }
.ls-table { border-collapse: collapse; width: 100%; font-size: 0.9em; margin-bottom: 6px; }
.ls-table th, .ls-table td { border-bottom: 1px solid #ddd; padding: 2px 6px; text-align: left; }
.ls-table td.n { text-align: right; font-variant-numeric: tabular-nums; }
.ls-issue-list { margin: 2px 0 6px 1.2em; padding: 0; }
.ls-vram { white-space: pre-wrap; font-size: 0.85em; }
.ls-queue li { list-style: none; }
.ls-model-facts { margin: 2px 4px; font-size: 0.95em; }
.ls-model-facts .ls-evidence { font-size: 0.85em; color: #666; }
"""

HEAD = """
<script>
(function () {
  function sync() {
    var panel = document.getElementById('ls-issues');
    var fields = {};
    if (panel && panel.dataset.fields) { try { fields = JSON.parse(panel.dataset.fields); } catch (e) {} }
    document.querySelectorAll('.ls-field-msg').forEach(function (m) {
      var f = fields[m.dataset.field];
      if (!f || m.textContent !== f.text || m.dataset.level !== f.level) {
        var box = m.parentElement; m.remove();
        if (box) { box.classList.remove('ls-has-error'); box.classList.remove('ls-has-warning'); }
      }
    });
    Object.keys(fields).forEach(function (name) {
      var box = document.getElementById('field-' + name);
      if (!box || box.querySelector(':scope > .ls-field-msg')) return;
      var f = fields[name], m = document.createElement('div');
      m.className = 'ls-field-msg ls-field-' + f.level; m.dataset.field = name; m.dataset.level = f.level;
      m.id = 'msg-' + name; m.textContent = f.text;
      box.appendChild(m); box.classList.add('ls-has-' + f.level);
    });
    var log = document.querySelector('#log-tail textarea');
    if (log && document.activeElement !== log) { log.scrollTop = log.scrollHeight; }
  }
  function visible(el) { return !!(el && el.offsetParent !== null && el.getClientRects().length); }
  function reveal(name, tries) {
    var box = document.getElementById('field-' + name);
    if (!box) return;
    if (!visible(box)) {
      var chain = [], p = box.parentElement;
      while (p) { if (p.classList && (p.classList.contains('ls-section') || p.classList.contains('ls-all-options'))) chain.unshift(p); p = p.parentElement; }
      for (var i = 0; i < chain.length; i++) {
        var acc = chain[i], btn = acc.querySelector('button');
        var inner = i + 1 < chain.length ? chain[i + 1] : box;
        if (visible(acc) && !visible(inner) && btn) { btn.click(); break; }
      }
      if ((tries || 0) < 4) { setTimeout(function () { reveal(name, (tries || 0) + 1); }, 150); return; }
    }
    box.scrollIntoView({block: 'center'});
    var input = box.querySelector('input, textarea'); if (input) input.focus({preventScroll: true});
  }
  document.addEventListener('click', function (ev) {
    var a = ev.target.closest && ev.target.closest('a.ls-issue-link');
    if (!a) return;
    ev.preventDefault(); reveal(a.dataset.field, 0);
  });
  window.lorasmithReveal = reveal;
  setInterval(sync, 250);
})();
</script>
"""
