-- Caregiver / clinician workload per ISO week: visits and hours scheduled, delivered and missed, and
-- documentation still open.
with visits as (
    select * from {{ ref('visit_completion') }}
    where practitioner_id is not null
),

appointments as (
    select appointment_id, scheduled_minutes from {{ ref('stg_wellsky__appointments') }}
),

weekly as (
    select
        v.practitioner_id,
        {{ week_start('v.visit_date') }} as week_start,
        count(*) as visits_scheduled,
        sum(case when v.appointment_status = 'completed' then 1 else 0 end) as visits_completed,
        sum(case when v.is_missed then 1 else 0 end) as visits_missed,
        sum(case when v.is_documented and not v.is_finalized then 1 else 0 end) as documentation_open,
        round(cast(sum(a.scheduled_minutes) / 60.0 as numeric), 2) as hours_scheduled
    from visits as v
    join appointments as a using (appointment_id)
    group by v.practitioner_id, {{ week_start('v.visit_date') }}
)

select
    w.practitioner_id,
    pr.first_name,
    pr.last_name,
    pr.credentials,
    w.week_start,
    w.visits_scheduled,
    w.visits_completed,
    w.visits_missed,
    w.documentation_open,
    w.hours_scheduled
from weekly as w
left join {{ ref('stg_wellsky__practitioners') }} as pr using (practitioner_id)
