"""The widgets in a real JupyterLab (headless Chromium via Playwright) at 1024 and 1400 px, in the
light and the dark theme: a tab opened for the first time while a cell runs shows live numbers, no
table cell overlaps its neighbour or wraps, the cluster table fits at 1024 px, empty bars read as
empty in the dark theme, a progress bar with 10 of 500 tasks failed is about 2% red, and the task
graph draws its canvas whole with its controls' labels uncut. Screenshots of each case are kept in
test-artifacts/.
"""

import os
import re

import pytest
from conftest import wait_for
from jupyter_lab import ARTIFACTS, CHROMIUM, jupyter_lab

playwright_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

CELLS = [
    "%load_ext ember",
    "%ember dashboard",
    # Runs until the test drops a file: the dashboard's Actors tab is opened for the first time
    # while this cell runs, so the kernel cannot hear that it was (the message waits for the cell).
    "import ember, os, time\n"
    "@ember.remote\n"
    "class Counter:\n"
    "    def incr(self):\n"
    "        return 1\n"
    "counter = Counter.remote()\n"
    "while not os.path.exists('stop'):\n"
    "    ember.get(counter.incr.remote())\n"
    "    time.sleep(0.05)\n"
    "print('cell', 'done')",
    # 10 of 500 tasks fail: the bar is 2% red, not red all over.
    "@ember.remote\n"
    "def work(i):\n"
    "    if i % 50 == 0:\n"
    "        raise ValueError(i)\n"
    "    return i\n"
    "ember.widgets.progress([work.remote(i) for i in range(500)], description='ten fail')",
]

# The progress bar's segments (share of the bar's width, by state) and whether the text line wraps.
PROGRESS = """
() => [...document.querySelectorAll('.ember-progress')].filter(p => p.offsetParent !== null).map(p => {
  const bar = p.querySelector('.ember-progress-bar').getBoundingClientRect();
  const shares = {};
  for (const seg of p.querySelectorAll('.ember-progress-segment')) {
    const state = [...seg.classList].find(c => c.startsWith('ember-progress-seg-')).slice(19);
    shares[state] = seg.getBoundingClientRect().width / bar.width;
  }
  const final = p.querySelector('.ember-progress-final');
  return {shares, barWidth: bar.width, right: p.getBoundingClientRect().right,
          final: final ? final.innerText : null, text: p.innerText};
})
"""

# The visible widget labels (the graph's "collapse past"): whether each shows its whole text.
LABELS = """
() => [...document.querySelectorAll('.widget-label')].filter(l => l.offsetParent !== null && l.innerText)
  .map(l => ({text: l.innerText, whole: l.scrollWidth <= l.clientWidth + 1}))
"""

# The task graph's bokeh canvases (bokeh draws inside shadow roots): drawn, with a size, in the page.
GRAPH = """
() => {
  const found = [];
  const walk = root => { for (const el of root.querySelectorAll('*')) {
    if (el.tagName === 'CANVAS') found.push(el);
    if (el.shadowRoot) walk(el.shadowRoot);
  } };
  for (const graph of document.querySelectorAll('.ember-task-graph')) if (graph.offsetParent !== null) walk(graph);
  return found.map(c => c.getBoundingClientRect()).filter(b => b.width > 0)
    .map(b => ({width: b.width, height: b.height, right: b.right}));
}
"""

# Every visible table of the ember views: the box of each cell's content, the most lines any of its
# text pieces takes (a wrapped text has client rects on several lines), and by how much the table
# passes the right edge of any ancestor that clips or scrolls it (the output area, a tab panel, ...).
MEASURE = """
() => [...document.querySelectorAll('.ember-view table')].filter(t => t.offsetParent !== null).map(table => {
  const lines = node => new Set([...(() => { const r = document.createRange(); r.selectNodeContents(node);
    return r.getClientRects(); })()].filter(b => b.width > 0).map(b => Math.round(b.top))).size;
  const rows = [...table.rows].map(row => [...row.cells].map(cell => {
    const range = document.createRange();
    range.selectNodeContents(cell);
    const box = range.getBoundingClientRect();
    const texts = [...cell.querySelectorAll('span, code')].filter(e => !e.querySelector('span, code'));
    const most = Math.max(texts.length ? 0 : lines(cell), ...texts.map(lines));
    return {left: box.left, right: box.right, text: cell.innerText.trim(), lines: most};
  }));
  let past = 0;
  for (let clip = table.parentElement; clip && !clip.classList.contains('jp-Notebook'); clip = clip.parentElement) {
    if (getComputedStyle(clip).overflowX !== 'visible')
      past = Math.max(past, table.getBoundingClientRect().right - clip.getBoundingClientRect().right);
  }
  return {rows, past, view: table.closest('.ember-view').className};
})
"""

TRACKS = """
() => [...document.querySelectorAll('.ember-view .ember-track')].filter(t => t.offsetParent !== null)
  .map(t => getComputedStyle(t).backgroundColor)
"""


def luminance(css_colour: str) -> float:
    red, green, blue = (int(v) for v in re.findall(r"\d+", css_colour)[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


def check_layout(page, case: str) -> None:
    tables = page.evaluate(MEASURE)
    assert tables, f"{case}: no ember table is visible"
    for table in tables:
        for row in table["rows"]:
            for cell in row:
                assert cell["lines"] <= 1 or not cell["text"], f"{case}: {cell['text']!r} wraps"
            for left, right in zip(row, row[1:]):
                if left["text"] and right["text"]:
                    assert left["right"] <= right["left"] + 0.5, f"{case}: {left['text']!r} runs into {right['text']!r}"
        assert table["past"] <= 1, f"{case}: {table['view']}: the table is cut off ({table['past']:.0f} px)"


def check_progress(page, case: str) -> None:
    (bar,) = page.evaluate(PROGRESS)
    assert bar["final"] and bar["final"].startswith("Finished in"), f"{case}: {bar['text']!r}"
    assert 0.01 <= bar["shares"].get("failed", 0) <= 0.04, f"{case}: failed share {bar['shares']}"
    assert bar["shares"].get("finished", 0) >= 0.95, f"{case}: finished share {bar['shares']}"
    assert bar["barWidth"] > 100 and bar["right"] <= page.viewport_size["width"], f"{case}: {bar}"


def check_graph(page, case: str) -> None:
    labels = page.evaluate(LABELS)
    assert labels and all(label["whole"] for label in labels), f"{case}: a control's label is cut: {labels}"
    canvases = page.evaluate(GRAPH)
    assert canvases, f"{case}: the task graph drew no canvas"
    for canvas in canvases:
        assert canvas["width"] > 200 and canvas["height"] > 100, f"{case}: the graph is {canvas}"
        assert canvas["right"] <= page.viewport_size["width"] + 1, f"{case}: the graph is cut off: {canvas}"


def test_widgets_layout_in_both_themes_and_widths(tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with jupyter_lab(tmp_path, {"layout.ipynb": CELLS}) as lab, playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        try:
            lab.open_and_run_all(page, "layout.ipynb")
            page.wait_for_selector(".ember-cluster .ember-node", timeout=60_000)
            running_cell = page.locator(".jp-Notebook .jp-CodeCell").nth(2).locator(".jp-OutputArea")

            # A tab opened for the first time while the third cell runs: the actor's calls count up.
            page.get_by_role("tab", name="Actors").last.click()
            calls = page.locator(".ember-actors .ember-actor-calls").last
            wait_for(lambda: calls.count() and int(calls.inner_text() or 0) > 0, timeout=30, message="actor calls")
            first = int(calls.inner_text())
            wait_for(lambda: int(calls.inner_text()) > first, timeout=30, message="the calls to keep counting")
            assert "cell done" not in running_cell.inner_text()  # all of it while the cell ran
            (tmp_path / "stop").touch()
            wait_for(lambda: "cell done" in running_cell.inner_text(), timeout=30, message="the cell to end")
            page.wait_for_selector(".ember-progress-final", timeout=60_000)

            for theme in ("light", "dark"):
                if theme == "dark":  # from the menu, as a user would (a reload would drop the outputs)
                    page.get_by_text("Settings", exact=True).first.click()
                    page.get_by_text("Theme", exact=True).first.hover()
                    page.get_by_text("JupyterLab Dark", exact=True).first.click()
                    page.wait_for_function("document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
                page.get_by_role("tab", name="Cluster").last.click()
                tracks = page.evaluate(TRACKS)
                assert tracks, "no bar is visible"
                if theme == "dark":  # an empty bar must not look like a full light-grey one
                    assert all(luminance(colour) < 0.5 for colour in tracks), tracks
                for width in (1024, 1400):
                    case = f"{theme} {width}px"
                    page.set_viewport_size({"width": width, "height": 1200})
                    for tab in ("Cluster", "Object store", "Actors"):
                        page.get_by_role("tab", name=tab).last.click()
                        page.wait_for_timeout(200)  # a layout pass
                        check_layout(page, f"{case}, {tab} tab")
                    check_progress(page, case)
                    page.get_by_role("tab", name="Task graph").last.click()
                    page.wait_for_timeout(200)
                    check_graph(page, case)
                    page.screenshot(path=str(ARTIFACTS / f"graph-{theme}-{width}.png"), full_page=True)
                    page.get_by_role("tab", name="Cluster").last.click()
                    page.screenshot(path=str(ARTIFACTS / f"widgets-{theme}-{width}.png"), full_page=True)
        finally:
            browser.close()
