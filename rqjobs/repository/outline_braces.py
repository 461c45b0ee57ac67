"""The outline of a brace-language file (Go, Rust, Java, C#, JavaScript, TypeScript, C, C++) from bounded patterns."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from rqjobs.repository.declarations import MAX_DECLARATIONS, MAX_SIGNATURE, Declaration, doc_summary, shorten

# Brace languages: anchored regular expressions find candidate declaration lines at one exact indentation (the top
# level, then the member indentation inside each class-like body). Every pattern starts with the literal newline and
# indentation, so the regex engine skips ahead with a fast literal search, and every repetition is length-bounded or
# followed by a character it cannot consume, so no input makes matching worse than linear per line.


@dataclass(frozen=True)
class _Grammar:
    top: str  # pattern of a declaration line at the top level (after '\n')
    member: str  # pattern of a declaration line inside a container body, at its member indentation
    classify: Callable[[re.Match, str, Declaration | None, bool, bool], tuple[str, str, bool] | None]


_ID = r'[A-Za-z_]\w*'
_JS_ID = r'[A-Za-z_$][\w$]*'
_SIG_TOKENS = re.compile(r'[(){}\[\];\n]')
_C_KEYWORDS = frozenset(
    (
        'if',
        'for',
        'while',
        'switch',
        'return',
        'sizeof',
        'else',
        'do',
        'case',
        'defined',
        'alignof',
        'decltype',
        'static_assert',
        'typedef',
        'catch',
        'throw',
        'new',
        'delete',
        'goto',
        '__attribute__',
        '__declspec',
        'using',
        'alignas',
        'noexcept',
        'requires',
        'co_return',
        'co_await',
        'assert',
        'typeof',
        '_Static_assert',
    )
)
_C_NAME = re.compile(r'~?[A-Za-z_][\w:~]*')
_JS_KEYWORDS = frozenset(
    (
        'if',
        'for',
        'while',
        'switch',
        'catch',
        'return',
        'function',
        'new',
        'await',
        'super',
        'typeof',
        'with',
        'do',
        'else',
        'throw',
        'delete',
        'void',
        'yield',
        'import',
        'export',
    )
)
_JAVA_KEYWORDS = frozenset(
    (
        'if',
        'for',
        'while',
        'switch',
        'catch',
        'return',
        'new',
        'throw',
        'else',
        'case',
        'synchronized',
        'super',
        'this',
        'try',
        'do',
        'assert',
        'yield',
    )
)


def _go(match: re.Match, text: str, parent: Declaration | None, has_body: bool, header: bool):
    if parent is not None:
        return 'method', match['func'], False
    if match['func']:
        return ('method' if match['recv'] is not None else 'function'), match['func'], False
    kind = match['tkind'] or 'type'
    return kind, match['type'], kind == 'interface' and has_body


def _rust(match: re.Match, text: str, parent: Declaration | None, has_body: bool, header: bool):
    if match['fn']:
        return ('method' if parent is not None and parent.kind in ('impl', 'trait') else 'function'), match['fn'], False
    if match['kw']:
        keyword = match['kw']
        if keyword == 'mod':
            return ('module', match['name'], True) if has_body else None
        return {'union': 'struct'}.get(keyword, keyword), match['name'], keyword == 'trait' and has_body
    return 'impl', '', has_body  # the name comes from the signature: see _impl_name


def _impl_name(signature: str) -> str:
    rest = signature.split('impl', 1)[-1].strip()
    if rest.startswith('<'):  # skip the generic parameters, which may nest
        depth = 0
        for index, char in enumerate(rest):
            depth += (char == '<') - (char == '>')
            if depth == 0:
                rest = rest[index + 1 :].strip()
                break
    rest = rest.split(' where ', 1)[0].strip()
    return rest.split(' for ', 1)[1].strip() if ' for ' in rest else rest


_JAVA_TYPES = {
    'class': 'class',
    'interface': 'interface',
    '@interface': 'interface',
    'enum': 'enum',
    'record': 'record',
    'struct': 'struct',
}


def _java(match: re.Match, text: str, parent: Declaration | None, has_body: bool, header: bool):
    if match['kw']:
        return _JAVA_TYPES[match['kw']], match['name'], has_body
    name, type_ = match['method'], (match['type'] or '').split()
    if name in _JAVA_KEYWORDS or (type_ and type_[-1] in _JAVA_KEYWORDS):
        return None
    if not type_ and (parent is None or name != parent.name):  # only constructors have no return type
        return None
    return 'method', name, False


def _javascript(match: re.Match, text: str, parent: Declaration | None, has_body: bool, header: bool):
    if parent is not None:
        name = match['method']
        return None if name in _JS_KEYWORDS else ('method', name, False)
    if match['func']:
        return 'function', match['func'], False
    if match['cls']:
        return 'class', match['cls'], has_body
    if match['iface']:
        return 'interface', match['iface'], has_body
    if match['type']:
        following = text[match.end() : match.end() + 1]
        return ('type', match['type'], False) if following in ('=', '<') else None
    if match['enum']:
        return 'enum', match['enum'], False
    if match['ns']:
        return 'namespace', match['ns'], has_body
    if match['arrow'] == 'function' or match['arrow'].endswith('=>') or _is_arrow(text, match.end() - 1):
        return 'function', match['const'], False
    return None


def _is_arrow(text: str, open_paren: int) -> bool:
    """Tell whether the parenthesis at `open_paren` starts an arrow function's parameters."""
    depth = 0
    for token in _SIG_TOKENS.finditer(text, open_paren, open_paren + 600):
        char = token.group()
        if char in '([{':
            depth += 1
        elif char in ')]}':
            depth -= 1
            if depth == 0:
                rest = text[token.end() : token.end() + 200].lstrip()
                if rest.startswith(':'):  # a return type annotation comes first
                    rest = rest.split('=>', 1)[0] if '=>' in rest else ''
                    return bool(rest) and '{' not in rest and ';' not in rest
                return rest.startswith('=>')
    return False


def _c(match: re.Match, text: str, parent: Declaration | None, has_body: bool, header: bool):
    in_type = parent is not None and parent.kind in ('class', 'struct', 'union')
    if match['kw']:
        keyword = match['kw'].split()[0]
        if not has_body:
            return None
        if keyword == 'enum':
            return 'enum', match['name'], False
        return keyword, match['name'], keyword != 'union'
    head = match['fhead']
    tokens = head.replace('*', ' ').replace('&', ' ').split()
    if not tokens:
        return None
    if 'operator' in head:
        name = head[head.index('operator') :].strip()
        type_ = head[: head.index('operator')].split()
    else:
        name, type_ = tokens[-1], tokens[:-1]
        if '=' in head or name in _C_KEYWORDS or not _C_NAME.fullmatch(name):
            return None
    if type_ and type_[0] in ('typedef', 'return', 'else', 'case', 'goto', 'using', 'friend', 'delete'):
        return None
    short = name.rsplit('::', 1)[-1].lstrip('~')
    special = name.startswith('~') or (parent is not None and short == parent.name) or 'operator' in name
    if not has_body:
        # A declaration without a body: a prototype (shown for headers and class members) or a macro call.
        if not (header or in_type) or not (type_ or special):
            return None
    elif in_type and not (type_ or special):
        return None
    return ('method' if in_type or '::' in name else 'function'), name, False


_JAVA_ANNOTATIONS = r'(?:@[\w.]+(?:\([^()\n]{0,100}\))?[ \t]+)*'
_JAVA_MODIFIERS = (
    r'(?:(?:public|protected|private|abstract|static|final|sealed|non-sealed|strictfp|synchronized|'
    r'native|default|transient|volatile|internal|partial|readonly|async|override|virtual|extern|'
    r'unsafe|new)[ \t]+)*'
)
_JAVA_TYPE = r'(?P<kw>class|interface|enum|record|@interface|struct)[ \t]+(?P<name>[A-Za-z_$][\w$]*)'
_C_TYPE = (
    r'(?:template[ \t]*<[^\n]{0,200}?>[ \t]*)?(?:typedef[ \t]+)?(?:(?P<kw>struct|class|union|'
    r'enum(?:[ \t]+(?:class|struct))?|namespace)[ \t]+(?:\[\[[^\]\n]{0,100}\]\][ \t]*)?'
    r'(?P<name>[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)[ \t]*(?:final\b|:(?!:)|\{|$)|'
    r'(?P<fhead>[A-Za-z_~][^\n;(){}]{0,300})\()'
)
_RUST_ITEM = (
    r'(?:pub(?:[ \t]*\([^()\n]{0,80}\))?[ \t]+)?(?:(?:const|async|unsafe|default|'
    r'extern(?:[ \t]+"[^"\n]{0,20}")?)[ \t]+)*(?:fn[ \t]+(?P<fn>' + _ID + r')|'
    r'(?P<kw>struct|enum|union|trait|type|mod)[ \t]+(?P<name>' + _ID + r')|(?P<impl>impl)\b)'
)

_GO = _Grammar(
    top=(
        r'(?:func[ \t]*(?:\((?P<recv>[^()\n]{0,200})\)[ \t]*)?(?P<func>'
        + _ID
        + r')|type[ \t]+(?P<type>'
        + _ID
        + r')(?:\[[^\]\n]{0,200}\])?[ \t]+(?:=[ \t]*)?(?P<tkind>struct|interface)?)'
    ),
    member=r'(?P<func>' + _ID + r')[ \t]*\(',
    classify=_go,
)
_RUST = _Grammar(top=_RUST_ITEM, member=_RUST_ITEM, classify=_rust)
_JAVA = _Grammar(
    top=_JAVA_ANNOTATIONS + _JAVA_MODIFIERS + _JAVA_TYPE,
    member=(
        _JAVA_ANNOTATIONS + _JAVA_MODIFIERS + r'(?:' + _JAVA_TYPE + r'|(?:<[^\n]{0,100}?>[ \t]*)?'
        r'(?:(?P<type>[\w$.?<>\[\], ]{1,120}?)[ \t]+)?(?P<method>[A-Za-z_$][\w$]*)[ \t]*\()'
    ),
    classify=_java,
)
_CSHARP = _Grammar(
    top=(
        _JAVA_ANNOTATIONS
        + r'(?:\[[^\]\n]{0,200}\][ \t]*)*'
        + _JAVA_MODIFIERS
        + r'(?:'
        + _JAVA_TYPE
        + r'|namespace[ \t]+(?P<ns>[\w.]+))'
    ),
    member=(
        r'(?:\[[^\]\n]{0,200}\][ \t]*)*' + _JAVA_MODIFIERS + r'(?:' + _JAVA_TYPE + r'|namespace[ \t]+(?P<ns>[\w.]+)'
        r'|(?:(?P<type>[\w$.?<>\[\], ]{1,120}?)[ \t]+)?(?P<method>[A-Za-z_][\w]*)[ \t]*(?:<[^\n]{0,100}?>)?\()'
    ),
    classify=lambda match, text, parent, has_body, header: (
        ('namespace', match['ns'], has_body) if match['ns'] else _java(match, text, parent, has_body, header)
    ),
)
_JAVASCRIPT = _Grammar(
    top=(
        r'(?:export[ \t]+)?(?:default[ \t]+)?(?:declare[ \t]+)?(?:(?:async[ \t]+)?function\b[ \t]*\*?[ \t]*(?P<func>'
        + _JS_ID
        + r')|(?:abstract[ \t]+)?class[ \t]+(?P<cls>'
        + _JS_ID
        + r')|interface[ \t]+(?P<iface>'
        + _JS_ID
        + r')|type[ \t]+(?P<type>'
        + _JS_ID
        + r')[ \t]*|(?:const[ \t]+)?enum[ \t]+(?P<enum>'
        + _JS_ID
        + r')|(?:namespace|module)[ \t]+(?P<ns>[\w$.]+)[ \t]*(?=\{)|(?:const|let|var)[ \t]+(?P<const>'
        + _JS_ID
        + r')[ \t]*(?::[^=\n]{0,200})?=[ \t]*(?:async\b[ \t]*)?(?P<arrow>function\b|\(|'
        + _JS_ID
        + r'[ \t]*=>))'
    ),
    member=(
        r'(?:(?:public|private|protected|static|readonly|abstract|override|async|declare|get|set|accessor)'
        r'[ \t]+)*\*?[ \t]*(?P<method>#?' + _JS_ID + r')[ \t]*\??[ \t]*(?:<[^\n]{0,200}?>)?[ \t]*\('
    ),
    classify=_javascript,
)
_C = _Grammar(top=_C_TYPE, member=_C_TYPE, classify=_c)
GRAMMARS = {
    'Go': _GO,
    'Rust': _RUST,
    'Java': _JAVA,
    'C#': _CSHARP,
    'JavaScript': _JAVASCRIPT,
    'TypeScript': _JAVASCRIPT,
    'C': _C,
    'C++': _C,
    'Objective-C': _C,
}


# Lines inside a body that say nothing of the members' indentation: C++ access labels, preprocessor lines.
_NOT_MEMBER = re.compile(r'[ \t]*(?:(?:public|private|protected|internal)(?:[ \t]+\w+)?[ \t]*:(?!:)|#)')


@lru_cache(maxsize=256)
def _compiled(template: str, indent: str) -> re.Pattern:
    # '\n' + the exact indentation, not followed by more of it: one indentation level only.
    return re.compile(r'\n' + re.escape(indent) + r'(?![ \t])(?:' + template + ')', re.MULTILINE)


class BraceScanner:
    """Outline of one file in a brace language; positions are in '\\n' + text, so every line starts after a '\\n'."""

    def __init__(self, text: str, grammar: _Grammar, header: bool) -> None:
        self.text = '\n' + text
        self.grammar = grammar
        self.header = header
        self.budget = MAX_DECLARATIONS
        self.candidates = MAX_DECLARATIONS * 10  # bound the work on files full of near-misses
        self._line_pos = 0
        self._line = 0

    def run(self) -> list[Declaration]:
        return self._scan(self.grammar.top, '', 0, len(self.text), None)

    def _line_of(self, pos: int) -> int:
        if pos >= self._line_pos:
            self._line += self.text.count('\n', self._line_pos, pos)
        else:
            self._line -= self.text.count('\n', pos, self._line_pos)
        self._line_pos = pos
        return self._line

    def _scan(self, template: str, indent: str, start: int, end: int, parent: Declaration | None) -> list[Declaration]:
        text, found = self.text, []
        for match in _compiled(template, indent).finditer(text, start, end):
            if self.budget <= 0 or self.candidates <= 0:
                break
            self.candidates -= 1
            line_start = match.start() + 1
            signature, body = self._signature(line_start)
            result = self.grammar.classify(match, text, parent, body >= 0, self.header)
            if result is None:
                continue
            kind, name, container = result
            if kind == 'impl':
                name = _impl_name(signature)
            self.budget -= 1
            declaration = Declaration(kind, name, signature, self._line_of(line_start), self._doc(match.start()))
            found.append(declaration)
            if container and body >= 0:
                self._members(declaration, indent, body, end)
        return found

    def _members(self, declaration: Declaration, indent: str, body: int, end: int) -> None:
        text = self.text
        newline = text.find('\n', body, end)
        if newline == -1 or '}' in text[body + 1 : newline]:  # a one-line body: `class A {}`
            return
        close = text.find('\n' + indent + '}', newline, end)
        close = end if close == -1 else close
        member_indent = None
        position = newline
        while position < close:  # the first non-blank line of the body gives the member indentation
            following = text.find('\n', position + 1, close)
            following = close if following == -1 else following
            line = text[position + 1 : following]
            if line.strip() and not _NOT_MEMBER.match(line):
                member_indent = line[: len(line) - len(line.lstrip(' \t'))]
                break
            position = following
        if member_indent is None or len(member_indent) <= len(indent) or not member_indent.startswith(indent):
            return  # an empty body, or an unindented one (a C++ namespace): its contents are scanned as siblings
        declaration.children = self._scan(self.grammar.member, member_indent, newline, close, declaration)

    def _signature(self, start: int) -> tuple[str, int]:
        """Return a declaration's signature and the position of its body's '{' (-1 without a body)."""
        text = self.text
        end_of_line = text.find('\n', start, start + 400)
        if end_of_line != -1:  # the usual case: the signature ends on its line, with balanced parentheses
            line = text[start:end_of_line]
            brace, semicolon = line.find('{'), line.find(';')
            cut = brace if semicolon == -1 or -1 < brace < semicolon else semicolon
            head = line if cut == -1 else line[:cut]
            if head.count('(') == head.count(')') and head.count('[') == head.count(']'):
                if cut == -1 and text[end_of_line : end_of_line + 200].lstrip().startswith('{'):
                    return shorten(' '.join(head.split()), MAX_SIGNATURE), text.index('{', end_of_line)
                return shorten(' '.join(head.split()), MAX_SIGNATURE), start + cut if cut == brace != -1 else -1
        stop, body, depth = min(len(text), start + 600), -1, 0
        cut = stop
        for token in _SIG_TOKENS.finditer(text, start, stop):
            char = token.group()
            if char in '([':
                depth += 1
            elif char in ')]':
                depth = max(depth - 1, 0)
            elif char == '{':
                if depth == 0:
                    cut = body = token.start()
                    break
                depth += 1
            elif char == '}':
                depth = max(depth - 1, 0)
            elif char == ';' and depth == 0:
                cut = token.start()
                break
            elif char == '\n' and depth == 0:
                cut = token.start()
                following = text[cut : cut + 200].lstrip()
                if following.startswith('{'):  # the brace on its own line (Allman style)
                    body = text.index('{', cut)
                break
        signature = ' '.join(text[start:cut].split())
        return shorten(signature, MAX_SIGNATURE), body

    def _doc(self, newline: int) -> str:
        """Return the first paragraph of the comment right above the declaration line that starts after `newline`."""
        text, end, collected = self.text, newline, []
        if newline == 0 or text[newline - 1] == '\n':  # no line above, or a blank one
            return ''
        for _ in range(60):
            if end <= 0:
                break
            start = text.rfind('\n', 0, end)
            line = text[start + 1 : end].strip()
            if not line:
                break
            if line.startswith('//'):
                collected.append(line.lstrip('/').lstrip('!').strip())
            elif line.endswith('*/') and not collected:
                opening = text.rfind('/*', max(0, end - 20000), end)
                if opening == -1:
                    break
                body = text[opening + 2 : text.rfind('*/', opening, end)].lstrip('*!')
                return doc_summary('\n'.join(part.strip().lstrip('*').strip() for part in body.splitlines()))
            elif line.startswith(('@', '#[', '[')) and not collected:
                pass  # an annotation or attribute between the comment and the declaration
            else:
                break
            end = start
        return doc_summary('\n'.join(reversed(collected))) if collected else ''
