"""The job row is rewritten often while a job waits and runs (its pending reason and estimate
at every admission pass, its progress at every trainer event). On PostgreSQL:

- leave 30% of each page free (fillfactor 70), so that such an update can stay on its page
  and skip every index (a HOT update) when it changes no indexed column;
- drop the indexes no query uses, which every other update had to maintain: the
  varchar_pattern_ops ("_like") twins Django adds for LIKE lookups on the id, the status
  and the file references (nothing filters them with startswith), and the organization's
  own index (job_org_created leads with the organization and serves its lookups).

Measured with benchmarks/admission_bench.py: writing 9,950 new pending reasons fell from
about 0.40 s to 0.28 s (docs/benchmarks.md §3).
"""

import django.db.models.deletion
from django.db import migrations, models

FILLFACTOR = 70
LIKE_INDEXED = ["id", "status", "training_file", "validation_file", "result_file"]


def _like_index_name(schema_editor, model, field):
    return schema_editor._create_index_name(model._meta.db_table, [field.column], suffix="_like")


def tune(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("finetuning", "FineTuningJob")
    table = schema_editor.quote_name(model._meta.db_table)
    schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {FILLFACTOR})")
    for name in LIKE_INDEXED:
        index = _like_index_name(schema_editor, model, model._meta.get_field(name))
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(index)}")


def untune(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("finetuning", "FineTuningJob")
    table = schema_editor.quote_name(model._meta.db_table)
    schema_editor.execute(f"ALTER TABLE {table} RESET (fillfactor)")
    for name in LIKE_INDEXED:
        field = model._meta.get_field(name)
        schema_editor.execute(schema_editor._create_like_index_sql(model, field))


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("finetuning", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="finetuningjob",
            name="organization",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="jobs",
                to="accounts.organization",
            ),
        ),
        migrations.RunPython(tune, untune),
    ]
