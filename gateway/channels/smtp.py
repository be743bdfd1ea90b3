"""E-mail over SMTP (smtplib): one plain-text message per event to the configured list.

::

    [[gateway.channels]]
    type = "smtp"
    host = "mail.example.org"
    port = 587
    security = "starttls"          # or "ssl" (port 465), or "none" (a local relay only)
    username = "fallwatch"
    password_env = "FALLWATCH_SMTP_PASSWORD"   # or password_file = "/etc/fallwatch/smtp.pw" (chmod 600)
    from = "fallwatch@example.org"
    to = ["night-team@example.org"]
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fallwatch.gateway.channels import CHANNELS, AlertEvent, Channel, ChannelContext
from fallwatch.gateway.channels._common import body, read_secret, subject
from fallwatch.gateway.channels._queue import QueuedChannel, QueuedChannelConfig


class SmtpChannelConfig(QueuedChannelConfig):
    type: Literal["smtp"] = "smtp"
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    from_: str = Field(alias="from", min_length=3)
    to: list[str] = Field(default_factory=list)  # the broadcast list; a person's own address comes from their contact
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _check(self) -> SmtpChannelConfig:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("a password needs a username")
        if self.broadcast and not self.to:
            raise ValueError("a broadcast smtp channel needs `to` (or set broadcast = false and address "
                             "people through [[gateway.paging.people]] contacts)")
        for addr in (self.from_, *self.to):
            if "@" not in addr or any(c in addr for c in "\r\n"):
                raise ValueError(f"not an e-mail address: {addr!r}")
        return self


class SmtpChannel(QueuedChannel):
    def __init__(self, cfg: SmtpChannelConfig, ctx: ChannelContext) -> None:
        self.locale, self.tz = ctx.locale, ctx.timezone
        self.cfg = cfg
        self.gateway_id = ctx.gateway_id
        self.password = read_secret("smtp channel password", cfg.password_env, cfg.password_file)
        super().__init__(cfg, ",".join(cfg.to) or "(addressed)")

    def message(self, e: AlertEvent, to: list[str] | None = None) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = subject(e, self.locale, names=self.names)
        msg["From"] = self.cfg.from_
        msg["To"] = ", ".join(to or self.cfg.to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=self.cfg.from_.rsplit("@", 1)[1])
        msg["X-Fallwatch-Alert"] = e.alert_id
        msg.set_content(body(e, self.locale, self.tz, names=self.names))
        return msg

    def send_to(self, event: AlertEvent, address: str) -> str:
        cfg = self.cfg
        if address and ("@" not in address or any(ch in address for ch in "\r\n,")):
            raise ValueError(f"not an e-mail address: {address!r}")
        to = [address] if address else list(cfg.to)
        if not to:
            raise ValueError("no recipient address")
        msg = self.message(event, to)
        smtp: smtplib.SMTP
        if cfg.security == "ssl":
            smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s, context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        with smtp:
            if cfg.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username and self.password is not None:
                smtp.login(cfg.username, self.password)
            refused = smtp.send_message(msg)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)
        return "sent"


@CHANNELS.register(SmtpChannelConfig)
def _make(cfg: SmtpChannelConfig, ctx: ChannelContext) -> Channel:
    return SmtpChannel(cfg, ctx)
