-- Which scheduled visit each documentation (encounter, care log) documents, and why; one row per
-- non-cancelled encounter that names a visit.
-- Home health and hospice encounters name their appointment's own id: `appointment_id`.
-- A personal care log names only its shift's source id, which every occurrence of a recurring shift shares
-- (the occurrence key is `<series id>@<start>`). The occurrence it documents is the one of that series whose
-- scheduled time its clocked time overlaps (clock-in to clock-out, or the clock-in alone while in progress;
-- a shift that ends when the next begins does not overlap it): `series_and_time`. When none or several occurrences overlap, or the named visit was never synced, no link
-- is guessed: `visit_id` is null and `link` says why, so the lost link is counted, not hidden.
with encounters as (
    select *
    from {{ ref('stg_wellsky__encounters') }}
    where appointment_id is not null and encounter_status <> 'cancelled'
),

appointments as (
    select appointment_id, series_id, scheduled_start, coalesce(scheduled_end, scheduled_start) as scheduled_end
    from {{ ref('stg_wellsky__appointments') }}
),

clocked as (
    select encounter_id, appointment_id, encounter_start as clock_in,
           coalesce(encounter_end, encounter_start) as clock_out
    from encounters
),

candidates as (
    select e.encounter_id, ap.appointment_id as visit_id, 'appointment_id' as link
    from encounters as e
    join appointments as ap on ap.appointment_id = e.appointment_id and ap.series_id is null
    union all
    select e.encounter_id, ap.appointment_id as visit_id, 'series_and_time' as link
    from clocked as e
    join appointments as ap
        on ap.series_id = e.appointment_id
        and (
            -- the two periods share some time; an instant (an open clock-in) may sit on the other's edge
            greatest(e.clock_in, ap.scheduled_start) < least(e.clock_out, ap.scheduled_end)
            or ((e.clock_in = e.clock_out or ap.scheduled_start = ap.scheduled_end)
                and greatest(e.clock_in, ap.scheduled_start) <= least(e.clock_out, ap.scheduled_end))
        )
),

counted as (
    select encounter_id, count(*) as n, min(visit_id) as visit_id, min(link) as link
    from candidates
    group by encounter_id
),

named_series as (
    select distinct series_id from appointments where series_id is not null
)

select
    e.encounter_id,
    e.appointment_id as named_visit,
    e.patient_id,
    e.encounter_start,
    e.encounter_end,
    e.is_finalized,
    case when c.n = 1 then c.visit_id end as visit_id,
    case
        when c.n = 1 then c.link
        when c.n > 1 then 'several_occurrences_overlap'
        when s.series_id is not null then 'no_occurrence_overlaps'
        else 'visit_not_synced'
    end as link
from encounters as e
left join counted as c on c.encounter_id = e.encounter_id
left join named_series as s on s.series_id = e.appointment_id
