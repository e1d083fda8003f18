"""The built site in a real browser (verification ladder, rung 5): headless Chromium via Playwright.

Uses Debian's /usr/bin/chromium (never `playwright install`: no browser downloads) and the Noto CJK
fonts (fonts-noto-cjk). Without them the tests skip with the reason, unless LINEAGE_REQUIRE_BROWSER=1
(.ci/run sets it), which makes them fail instead. One browser, one context, the site served from a
local http.server thread. Screenshots and a summary go to ``reports_dir`` (conftest).
"""

import functools
import importlib.util
import os
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("site")]  # one build: see conftest.site

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]

#: query -> pages (paths from the site root) of which at least one must be among the first TOP distinct
#: pages of the search results (a broad query matches most pages: only the ranking says it found the right one).
SEARCH_EXPECTED = {
    "扩散": {"overview/", "diffusion/ddpm/", "diffusion/nonequilibrium/"},
    "无分类器引导": {"guidance/cfg/"},
    "潜空间": {"latent/ldm/"},
    "零样本": {"clip-diffusion/clip/"},
}

TOP = 3

#: pages that get a full-page screenshot (1280 px wide)
SCREENSHOTS = {"index": "", "ddpm": "diffusion/ddpm/"}


def _missing_requirement() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    fonts = Path("/usr/share/fonts")
    if not (fonts.is_dir() and any(fonts.rglob("Noto*CJK*"))):
        return "the Noto CJK fonts are missing (apt-get install fonts-noto-cjk)"
    return None


@pytest.fixture(scope="module")
def server(site):
    """The site at http://127.0.0.1:<free port>/, from a thread; quiet."""

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser_context(server):
    reason = _missing_requirement()
    if reason:
        if os.environ.get("LINEAGE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LINEAGE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light",
                                      locale="zh-CN", service_workers="block")
        context.set_default_timeout(15_000)
        yield context
        context.close()
        browser.close()


class Visit:
    """One page load with everything the checks need recorded: console errors, page errors, requests."""

    def __init__(self, context, url: str):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}"))
        self.page.goto(url, wait_until="load")
        # MathJax typesets at startup; its promise settles once every formula is rendered (or failed).
        self.page.evaluate("() => window.MathJax?.startup?.promise")

    def foreign_requests(self, origin: str) -> list[str]:
        return [url for url in self.requests if not url.startswith(("data:", "blob:", origin))]


# Raw TeX left in the article (outside code and typeset math), untypeset formulas, TeX errors, broken images.
PAGE_PROBE = """() => {
  const article = document.querySelector("article");
  if (!article) return {article: false};
  const text = article.cloneNode(true);
  text.querySelectorAll("pre, code, mjx-container, script").forEach(e => e.remove());
  const raw = text.textContent;
  return {
    article: true,
    rawTex: ["$$", "\\\\(", "\\\\[", "\\\\frac", "\\\\mathbf"].filter(s => raw.includes(s)),
    // inline $...$ that arithmatex never saw (e.g. inside raw HTML such as a <figcaption> without markdown)
    rawInline: (raw.match(/\\$[^\\s$][^$\\n]{0,80}?\\$/g) || []).slice(0, 3),
    arithmatex: article.querySelectorAll(".arithmatex").length,
    unrendered: [...article.querySelectorAll(".arithmatex")].filter(e => !e.querySelector("mjx-container")).length,
    // TeX errors: <merror>, and undefined macros, which MathJax's noundefined extension shows as red text
    texErrors: [...(window.MathJax?.startup?.document?.math || [])]
      .filter(m => /<merror|mathcolor="red">\\\\/.test(MathJax.startup.toMML(m.root))).map(m => m.math),
    brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
  };
}"""

#: The smallest text a figure may show at its displayed size, in CSS px (issue 18: about 10 px at the column width
#: of a 1280-px screen; the figures' own 10-pt text is 13.3 px when an SVG is shown at its natural size).
MIN_FIGURE_TEXT_PX = 10.0

# Each SVG figure of the article: the smallest font-size of its <text> (SVG user units: matplotlib writes
# "font-size: Npx" in the units of its viewBox), scaled by the width it is shown at over the viewBox width.
FIGURE_TEXT_PROBE = """async () => {
  const found = [];
  for (const img of document.querySelectorAll("article img")) {
    if (!new URL(img.src).pathname.endsWith(".svg")) continue;
    const source = await (await fetch(img.src)).text();
    const svg = new DOMParser().parseFromString(source, "image/svg+xml").documentElement;
    const sizes = [...source.matchAll(/font-size:\\s*([0-9.]+)px/g)].map(m => parseFloat(m[1]));
    if (!sizes.length) continue;
    const shown = img.getBoundingClientRect().width;
    found.push({src: new URL(img.src).pathname, shown, smallest: Math.min(...sizes) * shown / svg.viewBox.baseVal.width});
  }
  return found;
}"""


PHONE = {"width": 390, "height": 844}


def site_pages(site: Path) -> list[str]:
    """Every page of the site, as a path from the root (`""`, `diffusion/ddpm/`, ...)."""
    folders = (p.parent.relative_to(site).as_posix() for p in site.rglob("index.html"))
    return sorted("" if folder == "." else folder + "/" for folder in folders)


def test_every_page_renders_cleanly(site, server, browser_context, reports_dir):
    """Every page: no console or page errors, no request to another origin, every image loaded, every
    formula typeset by MathJax (no raw TeX, no TeX error), figure text legible at 1280 px, and no sideways
    scrolling on a 390-px phone."""
    origin = server.rstrip("/")
    problems, math_pages, start = [], 0, time.perf_counter()
    for path in site_pages(site):
        visit = Visit(browser_context, server + path)
        probe = visit.page.evaluate(PAGE_PROBE)
        found = visit.errors + [f"foreign request: {url}" for url in visit.foreign_requests(origin)]
        if not probe["article"]:
            found.append("no <article>")
        else:
            found += [f"raw TeX {s!r}" for s in probe["rawTex"]]
            found += [f"raw inline math {s!r}" for s in probe["rawInline"]]
            found += [f"TeX error: {e}" for e in probe["texErrors"]]
            found += [f"broken image: {src}" for src in probe["brokenImages"]]
            if probe["unrendered"]:  # each formula must hold the mjx-container MathJax put there
                found.append(f"{probe['unrendered']} of {probe['arithmatex']} formulas not typeset")
            math_pages += probe["arithmatex"] > 0
            found += [f"figure text {f['smallest']:.1f} px (< {MIN_FIGURE_TEXT_PX}) shown {f['shown']:.0f} px wide: "
                      f"{f['src']}" for f in visit.page.evaluate(FIGURE_TEXT_PROBE)
                      if f["smallest"] < MIN_FIGURE_TEXT_PX]
            # on a phone the page itself must not scroll sideways: wide formulas, tables and code scroll in their
            # own blocks (the same typeset page, laid out again at the width of a 390-px phone)
            visit.page.set_viewport_size(PHONE)
            width = visit.page.evaluate("() => document.documentElement.scrollWidth")
            if width > PHONE["width"]:
                found.append(f"{width} px wide on a {PHONE['width']}-px phone")
        problems += [f"/{path}: {p}" for p in found]
        visit.page.close()
    seconds = time.perf_counter() - start
    pages = len(site_pages(site))
    (reports_dir / "browser.md").write_text(
        f"{pages} pages ({math_pages} with math) checked in Chromium in {seconds:.1f} s\n", encoding="utf-8")
    assert math_pages >= 5, math_pages  # the paper pages are full of formulas: MathJax must have seen them
    assert problems == [], "\n".join(problems[:60])


def search(page, query: str) -> list[str]:
    """Type `query` into Material's search box; the result pages as paths from the site root."""
    meta = "document.querySelector('.md-search-result__meta').textContent"
    box = page.locator("input[data-md-component=search-query]")  # always shown at 1280 px
    box.click()
    page.wait_for_function(f"() => !{meta}.includes('初始化')")  # zh "initialising the search engine"
    box.fill(query)
    box.press("End")  # Material reads the query on keyup; fill() alone sends none
    page.wait_for_function(f"() => /\\d|没有/.test({meta})")  # "N 个符合条件的结果" or "没有找到..."
    hrefs = page.eval_on_selector_all(".md-search-result__item > a", "links => links.map(a => a.href)")
    return list(dict.fromkeys(urlsplit(href).path.lstrip("/") for href in hrefs))  # distinct, in rank order


def test_search_finds_chinese_terms(server, browser_context):
    results = {}
    for query in SEARCH_EXPECTED:  # a fresh page per query: the result count of the last one is no signal
        visit = Visit(browser_context, server)
        results[query] = search(visit.page, query)
        visit.page.close()
    misses = {q: results[q] for q, expected in SEARCH_EXPECTED.items() if not expected & set(results[q][:TOP])}
    assert misses == {}, f"expected one of {SEARCH_EXPECTED}, found {misses}"


def test_palette_toggle_switches_scheme(server, browser_context):
    visit = Visit(browser_context, server)
    page = visit.page
    scheme = "() => document.body.getAttribute('data-md-color-scheme')"
    seen = [page.evaluate(scheme)]
    for _ in range(2):
        page.locator("form[data-md-component=palette] label:visible").click()
        seen.append(page.evaluate(scheme))
    page.close()
    assert seen == ["default", "slate", "default"], seen


def test_screenshots(server, browser_context, reports_dir):
    """Full-page screenshots, 1280 px wide, of the landing page and the DDPM page, for a person to look at."""
    shots = reports_dir / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    written = []
    for name, path in SCREENSHOTS.items():
        visit = Visit(browser_context, server + path)
        target = shots / f"{name}.png"
        visit.page.screenshot(path=str(target), full_page=True)
        visit.page.close()
        written.append(target)
    assert all(p.stat().st_size > 10_000 for p in written), written
    with (reports_dir / "browser.md").open("a", encoding="utf-8") as report:
        report.writelines(f"screenshot: {p}\n" for p in written)
