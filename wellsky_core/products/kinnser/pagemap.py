"""Every element the Kinnser portal channel touches, declared once per product, with fallbacks.

Selectors come from the public record (``docs/sandbox-kinnser-portal.md`` lists the source of each); the
first selector of a hook is the documented one, the rest are fallbacks seen in other automations or layouts.
When none matches, the channel raises ``PortalLayoutChanged`` naming the page and the first selector, and the
stream yields nothing (never half the data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Hooks = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class ClaimView:
    """One Claims Manager list: the link that opens it and the hash route it lands on."""

    name: str
    link: tuple[str, ...]
    route: str


@dataclass(frozen=True)
class PageMap:
    product: str
    pages: dict[str, Hooks]
    claim_views: tuple[ClaimView, ...]
    menu: dict[str, str] = field(
        default_factory=lambda: {
            "patients": "Patient Manager",
            "reports": "Reports / Admin",
            "billing": "Billing Manager",
            "hotbox": "HotBox",
        }
    )
    reports: dict[str, str] = field(
        default_factory=lambda: {"past_due": "Past Due Visits", "deviation": "Schedule Deviation"}
    )
    empty_grid_text: str = "There are currently no records to display"

    def hooks(self, page: str) -> Hooks:
        return self.pages[page]


_COMMON: dict[str, Hooks] = {
    "login": {
        "username": ("#username", "#UserName", "input[name='username']"),
        "password": ("#password", "#Password", "input[name='password']"),
        "submit": ("#login_btn", "button:has-text('Log in')", "input[type='submit'][value='Log in']"),
        "error": ("#loginError", "#login-error", ".login-error"),
        "code": ("#verificationCode", "input[autocomplete='one-time-code']"),
        "verify": ("#verify_btn", "button:has-text('Verify')"),
        "verify_error": ("#verifyError",),
        "terminate": ("#terminateSession", "button:has-text('Terminate')", "input[value='Terminate']"),
    },
    "shell": {
        "office": ("#swapUser", "select[name='swapUser']"),
        "menu": ("a.menuButton[onclick*='gotoMenu']", "a.menuButton"),
        "menu_item": ("a.menuitem",),
    },
    "guides": {"close": (".pendo-close-guide-x", "button.close", "[aria-label='Close']")},
    "patient_manager": {
        "table": ("#patientManagerList", "table.patientList"),
        "patient_link": ("a.patientLink", "a[href*='patientKey=']"),
    },
    "episode_manager": {
        "header": ("#patientHeader",),
        "no_episodes": ("#noEpisodes",),
        "episode": ("#episodeInfo",),
        "period": ("#certPeriod",),
        "number": ("#periodNumber",),
        "status": ("#episodeStatus",),
        "payer": ("#episodePayer",),
        "nursing": ("#LinkNursing", "a:has-text('Nursing')"),
        "therapy": ("#LinkTherapy",),
        "previous": ("#previouscert",),
        "schedule": ("#scheduled-task",),
    },
    "reports": {"list": ("table#ClinicalTasksTable",), "link": ("a.HotBox",)},
    "past_due": {"to_excel": ("a:has-text('To Excel')", "input[value='To Excel']", "button:has-text('To Excel')")},
    "deviation": {
        "from": ("#fromDate", "input[name='fromDate']"),
        "to": ("#toDate", "input[name='toDate']"),
        "run": ("#btnRunReport", "button:has-text('Run Report')"),
        "table": ("#scheduleDeviationReport", "table:has(th:text-is('Deviation'))"),
        "empty": (".alert-yellow-wide",),
        "error": ("#deviationError", ".alert-red"),
    },
    "billing": {
        "home": ("#ManagedCareClaims",),
        "grid": ("#claimGrid", "table.grid"),  # CSS only: also used in client-side waits
        "next": ("#nextGridPage",),
        "page_info": ("#gridPageInfo",),
        "export": ("#tabExport",),
        "save": ("#btnSaveLinkText",),
        "insurance": ("select[ng-model='insuranceKey']",),
        "spinner": ("#globalAjaxLoader", ".loading-message", ".loading", "[ng-show*='loading']"),
        "unbilled": ("#managed-care-unbilled-report-link",),
    },
    "unbilled": {
        "branch_all": ("#filter_Branch_btn_select_all",),
        "payer_type_all": ("#filter_Payer_Type_btn_select_all",),
        "insurance_all": ("#filter_Insurance_btn_select_all",),
        "insurance_options": ("input[name='Insurance']",),
        "fetch": ("#aggrid_btnfetch1",),
        "summary": ("#reportSummary",),
        "aging": ("#agingSummary",),
        "as_of": ("#reportAsOf",),
        "grid": (".ag-root", "#unbilledGrid"),
        "error": ("#unbilledError .alert-red",),
    },
}

_MANAGED_CARE = "/AM/billing/claims-manager/managed-care/"

HOME_HEALTH = PageMap(
    product="home_health",
    pages=_COMMON,
    claim_views=(
        ClaimView("not_ready", ("#managedCare-not-ready",), _MANAGED_CARE + "not-ready"),
        ClaimView("ready", ("#managedCare-ready", "#claimsCreation"), _MANAGED_CARE + "create-claims"),
        ClaimView("eoe_not_ready", ("#eoe-not-ready",), "/AM/billing/eoe/not-ready"),
        ClaimView("pending_approval", ("#pendingClaimsApproval",), _MANAGED_CARE + "approve-claims"),
        ClaimView("ready_to_send", ("#readyToSendClaims",), _MANAGED_CARE + "ready-to-send"),
        ClaimView("history", ("#claimsHistory",), _MANAGED_CARE + "history"),
    ),
)
"""Home health: RAP and end-of-episode (EOE) claims, so the EOE list is read too."""

HOSPICE = PageMap(
    product="hospice",
    pages=_COMMON,
    claim_views=tuple(v for v in HOME_HEALTH.claim_views if v.name != "eoe_not_ready"),
)
"""Hospice shares the shell (the public record shows one portal); it bills no RAP or EOE claims."""

PAGE_MAPS = {"home_health": HOME_HEALTH, "hospice": HOSPICE}
