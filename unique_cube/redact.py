"""Secrets out of every text that reaches a person: messages, exceptions, log records.

A STAC API URL may carry a user and password (``https://alice:pw@host/``) or a signed query
(``?se=…&sig=…``); a signed asset URL carries a SAS token; an HTTP error may quote the
``Authorization`` or ``Ocp-Apim-Subscription-Key`` header it was sent with. :func:`redact`
cuts all of these out and keeps the rest (host, path, status) so that a message still says
where things went wrong. It is applied where text leaves the program: the command line's
error line, the messages of errors raised on a catalog's URL, the run log and the product's
skip reasons, and every log record (:func:`install_redaction`, done when
:mod:`unique_cube.inputs.reads` is imported, so in every Dask worker that reads assets).
"""

from __future__ import annotations

import logging
import re

__all__ = ["REDACTED", "install_redaction", "redact"]


#: What a secret is replaced with.
REDACTED = "<redacted>"

_END = r"\s'\"<>`"  # what ends a URL (or a value) in running text

# user[:password]@ after a scheme; greedy up to the last '@' before the host, so that an
# unescaped '@' in a password does not leave its tail behind.
_USERINFO = re.compile(rf"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/{_END}?#]*@")

# A query string: '?name=' and everything up to the end of the URL (GDAL names files
# without a scheme, so no scheme is required), less the punctuation of the sentence after it
# ("…?sig=x: 403"). "what? nothing" is left alone.
_QUERY = re.compile(rf"\?[A-Za-z0-9_.~%-]+=[^{_END}]*?(?=[,;:.!)\]]*(?:[{_END}]|$))")

# A secret-named parameter outside a query string (a ``storage_options`` credential
# ``sv=…&sig=…``, an environment dump): its value.
_SAS_NAMES = r"sig|se|st|sp|sv|sr|ss|srt|spr|si|skoid|sktid|skt|ske|sks|skv|sdd"
_SECRET_WORDS = (
    r"token|secret|password|passwd|pwd|signature|credential|"
    r"subscription[-_]key|api[-_]?key|access[-_]?key|account[-_]?key|private[-_]?key"
)
_PARAM = re.compile(
    rf"(?i)((?<![\w-])(?:{_SAS_NAMES})|[\w.-]*(?:{_SECRET_WORDS})[\w.-]*)(=)[^&{_END},;)}}\]]+"
)

# Header-like text, "Name: value" or a dict's "'Name': 'value'": credentials named by a
# header's name. An authorization's scheme (Bearer, Basic, SharedKey …) is kept.
_HEADER_NAMES = (
    r"authorization|proxy-authorization|cookie|set-cookie|ocp-apim-subscription-key|"
    r"x-api-key|api-key|apikey|x-amz-security-token|x-ms-[\w-]*(?:key|token|signature)[\w-]*|"
    r"access_token|refresh_token|client_secret|password|passwd|"
    r"[\w-]*(?:-token|-secret|-password|subscription[-_]key)"
)
_HEADER = re.compile(
    rf"(?i)(?<![\w-])((?:{_HEADER_NAMES})['\"]?\s*[:=]\s*['\"]?"
    r"(?:(?:bearer|basic|digest|token|sharedkey|sas|negotiate|aws4-hmac-sha256)\s+)?+)"
    rf"[^{_END},;}}\]]+"
)


def redact(text: object) -> str:
    """``text`` (made a string) with its secrets replaced by ``<redacted>``.

    Cut out: the user and password of any URL; every query string (``?name=…`` up to the
    end of the URL, where SAS tokens, ``token=`` and ``subscription-key=`` live); a
    secret-named parameter elsewhere (``sig=``, ``token=``, ``api_key=`` …); the value of a
    credential header (``Authorization: Bearer …``, ``Ocp-Apim-Subscription-Key: …``).
    Hosts, paths and everything else are kept.
    """
    text = str(text)
    text = _QUERY.sub(f"?{REDACTED}", text)
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _HEADER.sub(rf"\1{REDACTED}", text)
    return _PARAM.sub(rf"\1\2{REDACTED}", text)


def _redacting_record_factory(factory):
    formatter = logging.Formatter()

    def make(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record stays as it is, for logging to report
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        # A traceback quotes the exception's text (a URL with its token): formatted and
        # redacted now, the handlers print this text instead of formatting it themselves.
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = redact(formatter.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    make.redacting = True  # type: ignore[attr-defined]
    return make


def install_redaction() -> None:
    """Every log record of this process is redacted when it is made (odc-loader, rasterio,
    GDAL and urllib3 name the URL they failed on with its token). Idempotent."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "redacting", False):
        logging.setLogRecordFactory(_redacting_record_factory(factory))
