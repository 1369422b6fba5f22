"""HJ 212 code tables: pollutant codes → point names and units, command codes, data flags.

Pollutant codes are HJ 212-2017 Appendix B (``a`` air, ``w`` water, noise without a prefix),
plus ``a05024`` (ozone: absent from the 2017 table, used by every ambient station) and the
HJ/T 212-2005 codes still sent by older loggers (``B01``, ``011``, ``02`` ...), mapped to the same
point names as their 2017 successors. Sources: PROTOCOLS.md (project notes) and public code
tables that list the 2017 code next to its 2005 predecessor.

Units vary by station; a device's ``points:`` overrides name and unit per code. Defaults:
particulates in ug/m3; gases in mg/m3 except at ambient air stations (ST 22), which report
SO2, NO2, NO, NOx and O3 in ug/m3 (CO stays mg/m3), as the national ambient standard does.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.model import Quality


@dataclass(frozen=True, slots=True)
class Code:
    name: str                       # point name: what the centre sees
    unit: str | None                # of Rtd/Min/Avg/Max
    cou_unit: str | None = None     # of Cou (cumulative amount), when the code has one
    ambient_unit: str | None = None  # unit at ambient air stations (ST 22) when it differs


AMBIENT_ST = {"22"}
UG = "ug/m3"
MG = "mg/m3"
DBA = "dB(A)"

CODES: dict[str, Code] = {
    # -- air (HJ 212-2017 Table B.1; names by the pollutant, not the station) --
    "a00000": Code("flue_gas_flow", "m3/s", "m3"),
    "a01001": Code("temperature", "degC"),
    "a01002": Code("humidity", "%"),
    "a01006": Code("pressure", "kPa"),
    "a01007": Code("wind_speed", "m/s"),
    "a01008": Code("wind_direction", "deg"),
    "a01010": Code("ringelmann", None),
    "a01011": Code("flue_gas_velocity", "m/s"),
    "a01012": Code("flue_gas_temperature", "degC"),
    "a01013": Code("flue_gas_pressure", "kPa"),
    "a01014": Code("flue_gas_humidity", "%"),
    "a01017": Code("flue_gas_dynamic_pressure", "kPa"),
    "a05001": Code("co2", MG, "kg"),
    "a05002": Code("ch4", MG, "kg"),
    "a05024": Code("o3", MG, "kg", ambient_unit=UG),
    "a19001": Code("o2", "%"),
    "a21001": Code("nh3", MG, "kg"),
    "a21002": Code("nox", MG, "kg", ambient_unit=UG),
    "a21003": Code("no", MG, "kg", ambient_unit=UG),
    "a21004": Code("no2", MG, "kg", ambient_unit=UG),
    "a21005": Code("co", MG, "kg"),
    "a21022": Code("cl2", MG, "kg"),
    "a21024": Code("hcl", MG, "kg"),
    "a21026": Code("so2", MG, "kg", ambient_unit=UG),
    "a21028": Code("h2s", MG, "kg"),
    "a24087": Code("thc", MG, "kg"),
    "a24088": Code("nmhc", MG, "kg"),
    "a25002": Code("benzene", MG, "kg"),
    "a25003": Code("toluene", MG, "kg"),
    "a25005": Code("xylene", MG, "kg"),
    "a34001": Code("tsp", UG, "g"),
    "a34002": Code("pm10", UG, "g"),
    "a34004": Code("pm25", UG, "g"),
    "a34005": Code("pm1", UG, "g"),
    "a34013": Code("smoke", MG, "kg"),
    # -- water (Table B.2) --
    "w00000": Code("flow", "L/s", "m3"),
    "w00001": Code("flow_total", "m3"),
    "w01001": Code("ph", None),
    "w01003": Code("turbidity", "NTU"),
    "w01009": Code("dissolved_oxygen", "mg/L"),
    "w01010": Code("water_temperature", "degC"),
    "w01012": Code("suspended_solids", "mg/L", "kg"),
    "w01014": Code("conductivity", "uS/cm"),
    "w01017": Code("bod5", "mg/L", "kg"),
    "w01018": Code("cod", "mg/L", "kg"),
    "w01019": Code("codmn", "mg/L", "kg"),
    "w01020": Code("toc", "mg/L", "kg"),
    "w21001": Code("tn", "mg/L", "kg"),
    "w21003": Code("nh3n", "mg/L", "kg"),
    "w21011": Code("tp", "mg/L", "kg"),
    "w22001": Code("petroleum", "mg/L", "kg"),
    # -- noise (Table B.3) --
    "LA": Code("la", DBA),
    "Leq": Code("leq", DBA),
    "L5": Code("l5", DBA),
    "L10": Code("l10", DBA),
    "L50": Code("l50", DBA),
    "L90": Code("l90", DBA),
    "L95": Code("l95", DBA),
    "Ld": Code("ld", DBA),
    "Ln": Code("ln", DBA),
    "Ldn": Code("ldn", DBA),
    "LMx": Code("lmax", DBA),
    "LMn": Code("lmin", DBA),
    # -- HJ/T 212-2005 codes, named as their 2017 successors --
    "B01": Code("flow", "L/s", "m3"),
    "B02": Code("flue_gas_flow", "m3/s", "m3"),
    "001": Code("ph", None),
    "003": Code("suspended_solids", "mg/L", "kg"),
    "010": Code("bod5", "mg/L", "kg"),
    "011": Code("cod", "mg/L", "kg"),
    "015": Code("toc", "mg/L", "kg"),
    "060": Code("nh3n", "mg/L", "kg"),
    "065": Code("tn", "mg/L", "kg"),
    "101": Code("tp", "mg/L", "kg"),
    "01": Code("smoke", MG, "kg"),
    "02": Code("so2", MG, "kg"),
    "03": Code("nox", MG, "kg"),
    "04": Code("co", MG, "kg"),
    "S01": Code("o2", "%"),
    "S02": Code("flue_gas_velocity", "m/s"),
    "S03": Code("flue_gas_temperature", "degC"),
    "S04": Code("flue_gas_dynamic_pressure", "kPa"),
    "S05": Code("flue_gas_humidity", "%"),
    "S08": Code("flue_gas_pressure", "kPa"),
}

# What a station of each system type usually measures: the points its birth message lists when
# the config names no points of its own (frames may carry any code; all of them are reported).
TYPICAL: dict[str, tuple[str, ...]] = {
    "22": ("a34004", "a34002", "a21026", "a21004", "a21005", "a05024", "a01001", "a01002",
           "a01006", "a01007", "a01008"),
    "39": ("a34001", "a34002", "a34004", "a01001", "a01002", "a01007", "a01008", "LA"),
    "31": ("a34013", "a21026", "a21002", "a19001", "a01011", "a01012", "a01013", "a01014", "a00000"),
    "21": ("w01001", "w01009", "w01010", "w01014", "w01003", "w01019", "w21003", "w21011", "w21001"),
    "32": ("w01018", "w21003", "w21011", "w21001", "w01001", "w00000"),
    "23": ("LA", "Leq", "L5", "L10", "L50", "L90", "L95", "LMx", "LMn"),
}

KINDS: dict[str, str] = {
    "21": "water_monitor", "22": "air_monitor", "23": "noise_monitor", "31": "emission_monitor",
    "32": "wastewater_monitor", "39": "dust_monitor",
}

SYSTEMS: dict[str, str] = {
    "21": "surface water", "22": "ambient air", "23": "noise", "31": "air pollution source",
    "32": "surface-water pollution source", "33": "groundwater pollution source",
    "34": "ocean pollution source", "35": "soil pollution source", "36": "acoustic pollution source",
    "37": "vibration pollution source", "38": "radioactive pollution source",
    "39": "construction dust", "41": "electromagnetic pollution source", "91": "system interaction",
}

COMMANDS: dict[str, str] = {
    "1000": "set answer timeout and retries", "1011": "get/upload station time", "1012": "set station time",
    "1013": "station time calibration request", "1061": "get/upload real-time data interval",
    "1062": "set real-time data interval", "1063": "get/upload minute data interval",
    "1064": "set minute data interval", "1072": "set station password",
    "2011": "real-time data", "2012": "stop real-time data", "2021": "device running status",
    "2022": "stop running status", "2031": "daily data", "2041": "device running time (daily)",
    "2051": "minute data", "2061": "hour data", "2081": "data logger restart time",
    "3011": "zero/span calibration", "3012": "take a sample now", "3013": "start cleaning/back-flush",
    "3014": "comparison sampling", "3015": "over-limit sample retention", "3016": "set sampling period",
    "3017": "get sampling period", "3018": "get sample output time", "3019": "get device id",
    "3020": "station information", "3021": "set station parameters",
    "9011": "request answer (QnRtn)", "9012": "execution result (ExeRtn)",
    "9013": "notification answer", "9014": "data answer",
}

REALTIME_CN = "2011"
STATUS_CN = "2021"
RUNTIME_CN = "2041"
RESTART_CN = "2081"
TIME_REQUEST_CN = "1013"
PERIODS: dict[str, str] = {"2051": "minute", "2061": "hour", "2031": "day"}
# Answers the station sends to our commands (1012 time set): counted, never answered.
ANSWER_CNS = {"9011", "9012", "9013", "9014"}
# Station-initiated notifications are answered 9013; uploads (2xxx and the parameter uploads)
# 9014; anything else that asks for an answer 9011 with QnRtn.
NOTICE_CNS = {"1013"}
UPLOAD_CNS = {"1011", "1061", "1063", "3015", "3017", "3018", "3019", "3020"}

STATS = {"Avg": "avg", "Min": "min", "Max": "max", "Cou": "cou",
         "ZsAvg": "zs_avg", "ZsMin": "zs_min", "ZsMax": "zs_max"}

# Data flags (HJ 212-2017 "数据标记") -> reading quality. See README.md, "Quality".
FLAG_QUALITY: dict[str, Quality] = {
    "N": "good",    # normal
    "F": "stale",   # analyser stopped: the value is not a current measurement
    "B": "stale",   # analyser <-> logger communication fault: the logger repeats an old value
    "M": "bad",     # maintenance
    "S": "bad",     # manually entered set value, not a measurement
    "D": "bad",     # analyser fault
    "C": "bad",     # calibration: the value is of the calibration gas
    "T": "bad",     # above the measuring range: the value is the range limit, not the truth
}
FLAG_MEANINGS: dict[str, str] = {
    "N": "normal", "F": "analyser stopped", "M": "maintenance", "S": "manual set value",
    "D": "analyser fault", "C": "calibration", "T": "above measuring range",
    "B": "analyser communication fault",
}


def flag_quality(flag: str | None) -> Quality:
    """The quality of a value with this data flag; an unknown flag is ``bad``."""
    if flag is None:
        return "good"
    return FLAG_QUALITY.get(flag, "bad")


def lookup(code: str) -> Code | None:
    """The built-in entry of a pollutant code (exact, then case-insensitive: 'la' is 'LA')."""
    entry = CODES.get(code)
    if entry is None:
        entry = _LOWER.get(code.lower())
    return entry


_LOWER = {key.lower(): value for key, value in CODES.items()}
