import hashlib, sys
sys.path.insert(0, "/work/main/tests")
from test_report_html import *  # noqa
from test_report_html import compare_outputs  # noqa

def test_dbg(compare_outputs, tmp_path):
    src = compare_outputs[0]
    dst = tmp_path / "r"
    main(["report", str(src), "--out", str(dst), "--dpi", "60", "-q"])
    for p in sorted(src.rglob("*.png")):
        r = p.relative_to(src)
        print(r, hashlib.md5(p.read_bytes()).hexdigest()[:6], hashlib.md5((dst / r).read_bytes()).hexdigest()[:6], mpimg.imread(p).shape, mpimg.imread(dst / r).shape)
    import difflib
    a = (src / "report.html").read_text(); b = (dst / "report.html").read_text()
    i = next(k for k in range(min(len(a), len(b))) if a[k] != b[k])
    print(a[i-300:i+50])
