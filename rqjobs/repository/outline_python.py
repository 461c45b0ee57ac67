"""The outline of a Python file, from the standard library's parser: it builds a tree and never runs the code."""

from __future__ import annotations

import ast
import re
import warnings
from functools import lru_cache

from rqjobs.repository.declarations import MAX_DECLARATIONS, MAX_SIGNATURE, Declaration, doc_summary, shorten

# Python: the standard library's parser, which builds a tree and never runs the code. Parsing a whole file costs
# about a millisecond per 5 KB, mostly in function bodies that the outline never looks at, so the tree is built from a
# skeleton of the file: its module- and class-level `def`/`class` headers and docstrings at their original line
# numbers, every other body cut to `pass`. Whatever the quick scan cannot vouch for (a header it cannot delimit, a
# triple quote open before a header, a def right after code that may have left its class, a skeleton that does not
# parse) falls back to parsing the whole file. So an error inside a function body does not lose the file's outline
# (Python 2 files keep theirs); a file whose declarations themselves do not parse yields [].
# Building the tree's nodes costs more than parsing, and most of a skeleton's nodes are its defs' parameters and
# annotations; yet most defs of a repository repeat a parameter list seen before (`(self)`, `(self, other)`...). So
# the parameters and return annotation of a def (the text from its '(' to its ':') are parsed once per analysis, as
# `def _<that text>:pass`, their rendering kept in `headers`, and the skeleton gets `def name():` on the same lines
# instead. A parameter list parses alone exactly when it parses in place (nothing outside its own text bears on
# it), and one that does not parse alone stays whole in the skeleton, which then decides as before.
_PY_CANDIDATE = re.compile(r'\n([ \t]*)(?:async[ \t]+)?(def|class)[ \t]')
_PY_TOKENS = re.compile(r'[()\[\]{}:#\n]|"""|\'\'\'|["\']')
_PY_STRING = re.compile(r'[rRuU]?("""|\'\'\'|"|\')')
_PY_HEADER_LIMIT = 10_000  # characters a def or class header may span
_PY_DEF_NAME = re.compile(r'[ \t]*(async[ \t]+)?def[ \t]+\w+[ \t]*(?=\()')
MAX_HEADERS = 20_000  # parameter lists remembered per analysis


def python_outline(text: str, headers: dict[str, tuple[str, str] | None] | None = None) -> list[Declaration]:
    """Return the outline of a Python file; `headers` remembers parameter lists across the files of an analysis."""
    text = text.removeprefix('\ufeff')
    if 'def' not in text and 'class' not in text:
        return []
    signatures: dict[int, tuple[str, str]] = {}  # line of a def whose parameters left the skeleton: their rendering
    skeleton = _python_skeleton(text, {} if headers is None else headers, signatures)
    module = _parse_python(skeleton) if skeleton is not None else None
    if module is None:
        module = _parse_python(text)
        signatures = {}
    if module is None:
        return []
    return _python_body(module.body, [MAX_DECLARATIONS], signatures, in_class=False)


def _parse_python(text: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # invalid escapes and the like warn at parse time; they are not ours
            return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


@lru_cache(maxsize=64)
def _dedent_pattern(width: int) -> re.Pattern:
    """Match a line of code indented by at most `width` characters."""
    return re.compile(r'\n[ \t]{0,' + str(width) + r'}[^ \t\r\n#]')


def _python_skeleton(
    text: str, headers: dict[str, tuple[str, str] | None], signatures: dict[int, tuple[str, str]]
) -> str | None:
    """Return the skeleton of a Python file (see above), '' when it declares nothing, None to parse it whole."""
    source = '\n' + text
    lines = text.split('\n')
    out = [''] * len(lines)
    counter = _LineCounter(source)
    stack: list[tuple[str, str]] = []  # open classes: (indentation, member indentation)
    checked = 0  # the dedent checks have covered the source up to here
    skip_until = 0  # inside a docstring already copied
    quotes_at, double, single = 0, 0, 0
    left: set[str] = set()  # member indentations of classes closed by a dedent rather than by a header
    found = False
    for start, indent, keyword in _python_candidates(source):
        if start < skip_until:
            continue
        double += source.count('"""', quotes_at, start)
        single += source.count("'''", quotes_at, start)
        quotes_at = start
        if double % 2 or single % 2:  # the header may be inside a string
            return None
        _close_classes(stack, left, source, indent, checked, start)
        checked = start
        if indent != (stack[-1][1] if stack else ''):
            if indent in left:  # a def after code that left a class, or inside a string in one: ambiguous
                return None
            continue  # nested in a function or a block: not part of the outline
        left = {width for width in left if len(width) <= len(indent)}
        colon = _python_header_end(source, start + 1)
        if colon < 0:
            return None
        end_of_line = source.find('\n', colon)
        end_of_line = len(source) if end_of_line == -1 else end_of_line
        first, last = counter.line(start + 1), counter.line(colon)
        header = _def_header(source, start + 1, colon, end_of_line, headers)  # None for a class
        out[first : last + 1] = lines[first : last + 1] if header is None else header[0]
        if header is not None:
            signatures[first + 1] = header[1]  # by the def's line number, as the tree gives it
        found = True
        checked = end_of_line
        rest = source[colon + 1 : end_of_line].strip()
        if rest and not rest.startswith('#'):
            continue  # a one-line body: `def f(): return 1`
        found_body = _first_body_line(source, end_of_line)
        if found_body is None:
            return None
        body, following, stripped = found_body
        line = source[body + 1 : following]
        body_indent = line[: len(line) - len(line.lstrip(' \t'))]
        if len(body_indent) <= len(indent) or not body_indent.startswith(indent):
            return None
        index = counter.line(body + 1)
        string = _PY_STRING.match(stripped)
        if string:  # the docstring: copied whole
            close = _docstring_end(source, body + 1 + len(body_indent) + string.end(), string.group(1), following)
            if close < 0:
                return None
            last = counter.line(close - 1) if close > body + 1 else index
            out[index : last + 1] = lines[index : last + 1]
            checked = skip_until = close
        elif not (keyword == 'class' and _PY_CANDIDATE.match(source, body)):  # no member header right here
            out[index] = body_indent + 'pass'
        if keyword == 'class':
            stack.append((indent, body_indent))
    return '\n'.join(out) if found else ''


def _def_header(
    source: str,
    start: int,
    colon: int,
    end_of_line: int,
    headers: dict[str, tuple[str, str] | None],
) -> tuple[list[str], tuple[str, str]] | None:
    """Return the skeleton lines of the def header at `start` without its parameters, and their rendering.

    None keeps the header whole: its name is not followed by '(' on the same line, or its parameters do not parse.
    """
    name = _PY_DEF_NAME.match(source, start, colon)
    if name is None:
        return None
    parameters = source[name.end() : colon]
    if '\r' in parameters:  # a lone CR ends a line for the parser, not for the skeleton's line count
        return None
    key = ('async def _' if name.group(1) else 'def _') + parameters
    if key in headers:
        rendering = headers[key]
    else:
        module = _parse_python(key + ':pass')
        node = module.body[0] if module is not None and len(module.body) == 1 else None
        rendering = None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            rendering = _python_arguments(node.args), f' -> {_expr(node.returns)}' if node.returns is not None else ''
        if len(headers) < MAX_HEADERS:
            headers[key] = rendering
    if rendering is None:
        return None
    # The same lines: `def name(`, as many line ends as the parameters spanned, then `):` and the rest of the line.
    lines = source[start : name.end()] + '(' + '\n' * parameters.count('\n') + ')' + source[colon:end_of_line]
    return lines.split('\n'), rendering


def _docstring_end(source: str, position: int, quote: str, following: int) -> int:
    """Return the end of the line where a docstring opened at `position` closes (`following` for one quote), or -1."""
    if len(quote) < 3:
        return following
    close = source.find(quote, position)
    if close == -1:
        return -1
    close = source.find('\n', close + 3)
    return len(source) if close == -1 else close


def _close_classes(
    stack: list[tuple[str, str]], left: set[str], source: str, indent: str, checked: int, start: int
) -> None:
    """Pop the open classes that a header at `indent`, or code between `checked` and `start`, has closed."""
    while stack:
        class_indent, member_indent = stack[-1]
        if len(indent) < len(member_indent):
            stack.pop()
        elif _dedent_pattern(len(class_indent)).search(source, checked, start):
            left.add(member_indent)  # code (or a string's text) at the class's indentation or less
            stack.pop()
        else:
            break


def _first_body_line(source: str, end_of_line: int) -> tuple[int, int, str] | None:
    """Find the first line of a body after a header's line: (the '\n' before it, its end, its stripped text)."""
    body = end_of_line
    while True:
        following = source.find('\n', body + 1)
        following = len(source) if following == -1 else following
        stripped = source[body + 1 : following].strip()
        if stripped and not stripped.startswith('#'):
            return body, following, stripped
        if following == len(source):
            return None  # a header with no body: not Python this outline can read
        body = following


def _python_candidates(source: str) -> list[tuple[int, str, str]]:
    """Return (position of the '\\n' before the line, indentation, keyword) of lines that start a def or class."""
    found = []
    for keyword in ('def', 'class'):  # str.find is several times faster than a regex scan of every line
        needle = keyword + ' '
        position = source.find(needle)
        while position != -1:
            line_start = source.rfind('\n', 0, position)
            prefix = source[line_start + 1 : position] if position - line_start < 200 else 'x'  # not an indentation
            if not prefix or (prefix[-1] in ' \t' and prefix.strip() in ('', 'async')):
                found.append((line_start, prefix[: len(prefix) - len(prefix.lstrip(' \t'))], keyword))
            position = source.find(needle, position + 1)
    found.sort()
    return found


def _python_header_end(source: str, start: int) -> int:
    """Return the position of the colon that ends the def or class header at `start`, or -1."""
    end_of_line = source.find('\n', start)
    line = source[start : end_of_line if end_of_line != -1 else len(source)].rstrip()
    if (
        line.endswith(':')
        and '"' not in line
        and "'" not in line
        and '#' not in line
        and line.count('(') == line.count(')')
        and line.count('[') == line.count(']')
        and line.count('{') == line.count('}')
    ):
        return start + len(line) - 1  # the usual one-line header, without strings or comments
    depth, position, limit = 0, start, min(len(source), start + _PY_HEADER_LIMIT)
    while True:
        token = _PY_TOKENS.search(source, position, limit)
        if token is None:
            return -1
        char, position = token.group(), token.end()
        if char in ('(', '[', '{'):
            depth += 1
        elif char in (')', ']', '}'):
            depth -= 1
        elif char == ':':
            if depth == 0:
                return token.start()
        elif char == '#':
            position = source.find('\n', position)
            if position == -1:
                return -1
        elif char == '\n':
            if depth <= 0:
                return -1
        else:
            position = _string_end(source, position, char, limit)
            if position < 0:
                return -1


def _string_end(source: str, position: int, quote: str, limit: int) -> int:
    while True:
        close = source.find(quote, position, limit)
        if close == -1 or (len(quote) == 1 and source.find('\n', position, close) != -1):
            return -1
        backslashes = 0
        while source[close - 1 - backslashes] == '\\':
            backslashes += 1
        if backslashes % 2 == 0:
            return close + len(quote)
        position = close + 1


class _LineCounter:
    """Line index (0-based) of positions in '\n' + text, counted incrementally."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.position = 0
        self.count = 0

    def line(self, position: int) -> int:
        if position >= self.position:
            self.count += self.source.count('\n', self.position, position)
        else:
            self.count -= self.source.count('\n', position, self.position)
        self.position = position
        return self.count - 1


def _python_body(
    body: list[ast.stmt], budget: list[int], signatures: dict[int, tuple[str, str]], *, in_class: bool
) -> list[Declaration]:
    declarations = []
    for node in body:
        if budget[0] <= 0:
            break
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            budget[0] -= 1
            declarations.append(
                Declaration(
                    'method' if in_class else 'function',
                    node.name,
                    _python_signature(node, signatures.get(node.lineno)),
                    node.lineno,
                    _python_doc(node),
                )
            )
        elif isinstance(node, ast.ClassDef):
            budget[0] -= 1
            declaration = Declaration('class', node.name, _python_signature(node), node.lineno, _python_doc(node))
            declaration.children = _python_body(node.body, budget, signatures, in_class=True)
            declarations.append(declaration)
    return declarations


def _python_doc(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    first = node.body[0] if node.body else None
    if type(first) is ast.Expr and type(first.value) is ast.Constant and type(first.value.value) is str:
        return doc_summary(first.value.value)
    return ''


def _unparse(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except (RecursionError, ValueError, AttributeError, TypeError):
        return '…'


_SIMPLE = (ast.Name, ast.Attribute, ast.Constant, ast.Subscript, ast.List)


def _expr(node: ast.AST) -> str:
    """Return `ast.unparse(node)`, by a fast path for the names, subscripts and constants of most annotations."""
    kind = type(node)
    if kind is ast.Name:
        return node.id
    if kind is ast.Constant:
        value = node.value
        if value is None or value is True or value is False or value is Ellipsis:
            return '...' if value is Ellipsis else repr(value)
        if type(value) is int and -(10**15) < value < 10**15:
            return repr(value)
        if (
            type(value) is str
            and node.kind is None
            and len(value) < 200
            and value.isprintable()
            and "'" not in value
            and '\\' not in value
        ):
            return repr(value)
    elif kind is ast.Attribute and type(node.value) in (ast.Name, ast.Attribute):
        return f'{_expr(node.value)}.{node.attr}'
    elif kind is ast.Subscript and type(node.value) in (ast.Name, ast.Attribute):
        inner = node.slice
        if type(inner) is ast.Tuple and len(inner.elts) > 1 and all(isinstance(e, _SIMPLE) for e in inner.elts):
            return f'{_expr(node.value)}[{", ".join(_expr(element) for element in inner.elts)}]'
        if isinstance(inner, _SIMPLE):
            return f'{_expr(node.value)}[{_expr(inner)}]'
    elif kind is ast.List and all(isinstance(element, _SIMPLE) for element in node.elts):
        return f'[{", ".join(_expr(element) for element in node.elts)}]'
    elif (
        kind is ast.BinOp
        and type(node.op) is ast.BitOr
        and all(
            isinstance(side, _SIMPLE) or (type(side) is ast.BinOp and type(side.op) is ast.BitOr)
            for side in (node.left, node.right)
        )
        and type(node.right) is not ast.BinOp
    ):
        return f'{_expr(node.left)} | {_expr(node.right)}'
    return _unparse(node)


def _python_signature(
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, rendered: tuple[str, str] | None = None
) -> str:
    """Return a declaration's signature; `rendered` holds a def's parameters and return annotation, if known."""
    if isinstance(node, ast.ClassDef):
        bases = [_expr(base) for base in node.bases] + [
            f'{kw.arg}={_expr(kw.value)}' if kw.arg else f'**{_expr(kw.value)}' for kw in node.keywords
        ]
        return shorten(f'class {node.name}({", ".join(bases)})' if bases else f'class {node.name}', MAX_SIGNATURE)
    prefix = 'async def' if isinstance(node, ast.AsyncFunctionDef) else 'def'
    if rendered is None:
        returns = f' -> {_expr(node.returns)}' if node.returns is not None else ''
        rendered = _python_arguments(node.args), returns
    return shorten(f'{prefix} {node.name}({rendered[0]}){rendered[1]}', MAX_SIGNATURE)


def _python_arguments(args: ast.arguments) -> str:
    def one(arg: ast.arg, default: ast.expr | None = None) -> str:
        text = arg.arg
        if arg.annotation is not None:
            text += f': {_expr(arg.annotation)}'
        if default is not None:
            text += f' = {_expr(default)}' if arg.annotation is not None else f'={_expr(default)}'
        return text

    parts = []
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        parts.append(one(arg, default))
        if index == len(args.posonlyargs) - 1:
            parts.append('/')
    if args.vararg is not None:
        parts.append('*' + one(args.vararg))
    elif args.kwonlyargs:
        parts.append('*')
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        parts.append(one(arg, default))
    if args.kwarg is not None:
        parts.append('**' + one(args.kwarg))
    return ', '.join(parts)
