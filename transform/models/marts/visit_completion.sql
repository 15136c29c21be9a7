-- One row per scheduled visit: was it documented, on time, finalized, or missed?
with appointments as (
    select * from {{ ref('stg_wellsky__appointments') }}
),

encounters as (
    -- one documentation per visit: the earliest non-cancelled encounter linked to it (documentation_links)
    select *
    from (
        select
            l.*,
            row_number() over (partition by l.visit_id order by l.encounter_start, l.encounter_id) as rank_in_visit
        from {{ ref('documentation_links') }} as l
        where l.visit_id is not null
    ) as ranked
    where rank_in_visit = 1
)

select
    ap.appointment_id,
    ap.patient_id,
    ap.practitioner_id,
    ap.discipline,
    ap.visit_date,
    ap.scheduled_start,
    ap.appointment_status,
    e.encounter_id,
    e.encounter_start,
    e.link as documentation_link,
    e.encounter_id is not null as is_documented,
    coalesce(e.is_finalized, false) as is_finalized,
    case when e.encounter_id is not null
         then {{ minutes_between('ap.scheduled_start', 'e.encounter_start') }} end as start_delay_minutes,
    e.encounter_id is not null
        and abs({{ minutes_between('ap.scheduled_start', 'e.encounter_start') }}) <= {{ var('on_time_minutes') }}
        as is_on_time,
    ap.appointment_status = 'missed'
        or (ap.appointment_status = 'scheduled' and e.encounter_id is null and ap.visit_date < {{ as_of_date() }})
        as is_missed
from appointments as ap
left join encounters as e on e.visit_id = ap.appointment_id
where ap.appointment_status <> 'cancelled'
