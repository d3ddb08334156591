"""MATH-style problems and GSM8K with our own short prompt, scored here without running anything: the
prediction (last \\boxed{}, GSM8K's `####`, or the <answer>) and the gold answer are compared after
normalising their LaTeX, or numerically."""
import math
import re

from buffers import is_well_formed
from evals.common import Benchmark, load_records

MATH_REL_TOL = 1e-4  # numeric answers within 0.01% are equal (0.333 vs 1/3 is not; 0.3333 is)
FIELDS = {"math": ("problem", "answer"), "gsm8k": ("question", "answer")}


def last_boxed(text):
    """Content of the last \\boxed{...} (or \\fbox{...}) with nested braces; `\\boxed 5` too; else None."""
    boxed = text.rfind("\\boxed")
    fbox = text.rfind("\\fbox")
    if boxed < 0 and fbox < 0:
        return None
    rest = text[boxed + len("\\boxed"):] if boxed > fbox else text[fbox + len("\\fbox"):]
    if rest.startswith(" "):
        return rest.split("$")[0].strip()
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i]
    return None


def extract_math_answer(response, bench):
    """The prediction in a response: last \\boxed{}, else what follows the last `####` (GSM8K's own
    format), else the <answer> content or the whole text; for GSM8K the last number of that."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    if "####" in response:
        return response.rsplit("####", 1)[1].strip()
    answers = re.findall(r"<answer>(.*?)</answer>", response, re.S)
    text = answers[-1] if answers else response
    if bench == "gsm8k":
        numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
        return numbers[-1] if numbers else text.strip()
    return text.strip()


def gold_answer(bench, problem):
    """MATH-500 `answer` as is; GSM8K's `answer` is a worked solution ending in `#### 72`."""
    answer = str(problem["answer"])
    return answer.rsplit("####", 1)[-1].strip() if bench == "gsm8k" else answer


def _fraction(match):
    atom = r"-?(?!.*\\frac)[\w.\\{}]+"  # 2, x, \sqrt{3}: no parentheses needed
    parts = [p if re.fullmatch(atom, p) else f"({p})" for p in match.groups()]
    return f"{parts[0]}/{parts[1]}"


def normalize_math(answer):
    """Canonical text of a math answer: the spacing and LaTeX dressing that do not change its value
    are removed, \\frac{a}{b} (and \\dfrac, \\tfrac, \\frac12) becomes a/b, trailing .0 goes."""
    s = str(answer).strip()
    s = re.sub(r"\\text\{\s[^{}]*\}$", "", s) if re.search(r"[\d}]\s*\\text\{\s", s) else s  # units
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\[!,;:]|\\?\$|\s", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    frac = r"\\frac\{((?:[^{}]|\{[^{}]*\})*)\}\{((?:[^{}]|\{[^{}]*\})*)\}"  # one level of nested braces
    while re.search(frac, s):
        s = re.sub(frac, _fraction, s)
    if re.fullmatch(r"[a-zA-Z]\w?=[^=]+", s):  # "x=5" -> "5"
        s = s.split("=", 1)[1]
    s = re.sub(r"(\d)\.0+(?!\d)", r"\1", s)  # 5.0 -> 5, 2.00 -> 2
    return s.rstrip(".")


def to_number(s):
    """Float value of a normalised answer like -3, 1,000, 0.25, .5, 1/3, (-1)/(2); else None."""
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"\(?(-?[\d.]+)\)?/\(?(-?[\d.]+)\)?", s)
    try:
        if m:
            return float(m.group(1)) / float(m.group(2))
        return float(s) if re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", s) else None
    except (ValueError, ZeroDivisionError):
        return None


def split_top_level(s):
    """Elements of a bracketed tuple/list/interval `(a,b)`, or None if s is not one."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    parts = []
    depth = 0
    current = ""
    for ch in s[1:-1]:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def math_equal(prediction, gold):
    """Equal after normalisation, or numerically within MATH_REL_TOL, element by element for tuples."""
    a = normalize_math(prediction)
    b = normalize_math(gold)
    if a == b:
        return True
    x = to_number(a)
    y = to_number(b)
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=MATH_REL_TOL, abs_tol=1e-9)
    parts_a = split_top_level(a)
    parts_b = split_top_level(b)
    if parts_a and parts_b and len(parts_a) == len(parts_b) > 1 and a[0] + a[-1] == b[0] + b[-1]:
        return all(math_equal(p, q) for p, q in zip(parts_a, parts_b))
    return False


def prompt(question):
    return f"Solve this problem. Give the final answer as \\boxed{{...}} inside <answer> </answer>.\n\n{question}"


def score(name, problems, answers):
    scores = {}
    for pid, per_problem in answers.items():
        gold = gold_answer(name, problems[pid])
        scores[pid] = [math_equal(extract_math_answer(answer, name), gold) for answer in per_problem]
    return {"scores": scores}


def benchmark(name, question_field):
    return Benchmark(
        load=lambda path, options: load_records(path, name, FIELDS[name]),
        prompt=lambda problem: prompt(problem[question_field]),
        wraps_prompt=True,
        answer=lambda response: response,  # whole: scoring extracts the prediction
        score=lambda problems, answers, executor, options: score(name, problems, answers),
        max_new_tokens=1024,
        sandbox=None,
        well_formed=is_well_formed,
    )


MATH = benchmark("math", "problem")
GSM8K = benchmark("gsm8k", "question")
