<?xml version="1.0" encoding="UTF-8"?>
<!--
  CDA R2 header (CR d'imagerie, N1 or N3)  ->  XDS DocumentEntry metadata for the DMP.

  Output: a flat <m:metadata> document in XDS terms (one element per XDS attribute/slot, values
  already in their HL7v2 XDS formats: XCN, XON, CX, CXi). The engine (engine/dmp/metadata.py)
  reads it, adds what does not come from the CDA (hash, size, request flags -> extra
  confidentiality codes, entryUUIDs, UTC conversion of times) and writes the ebRIM.

  Every value the DMP requires but the header does not give produces <m:missing element="..."/>;
  the engine turns those into a permanent failure naming the element.

  XSLT 1.0 on purpose: run by lxml (libxslt), compiled once, no per-call JVM/engine start; every
  construct here is plain XPath 1.0 so integrators can adapt it with any XSLT processor.
  Sources of the mapping: ANS IG "transmission document CDA" mapping.md, DRIMbox PoC, see
  docs/dmp.md.
-->
<xsl:stylesheet version="1.0"
    xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:cda="urn:hl7-org:v3"
    xmlns:ps3-20="urn:dicom-org:ps3-20"
    xmlns:m="urn:pfi:dmp:metadata"
    exclude-result-prefixes="cda ps3-20">

  <xsl:output method="xml" encoding="UTF-8" indent="yes"/>

  <!-- OIDs used below -->
  <xsl:variable name="RPPS_OID" select="'1.2.250.1.71.4.2.1'"/>
  <xsl:variable name="STRUCT_OID" select="'1.2.250.1.71.4.2.2'"/>
  <xsl:variable name="INS_OIDS" select="'|1.2.250.1.213.1.4.8|1.2.250.1.213.1.4.9|1.2.250.1.213.1.4.10|1.2.250.1.213.1.4.11|'"/>
  <xsl:variable name="FORMAT_SCHEME" select="'1.3.6.1.4.1.19376.1.2.3'"/>

  <xsl:template match="/">
    <xsl:choose>
      <xsl:when test="cda:ClinicalDocument">
        <xsl:apply-templates select="cda:ClinicalDocument"/>
      </xsl:when>
      <xsl:otherwise>
        <m:metadata><m:missing element="ClinicalDocument (root element in urn:hl7-org:v3)"/></m:metadata>
      </xsl:otherwise>
    </xsl:choose>
  </xsl:template>

  <xsl:template match="cda:ClinicalDocument">
    <m:metadata>
      <xsl:call-template name="document-ids"/>
      <xsl:call-template name="codes"/>
      <xsl:call-template name="times"/>
      <xsl:call-template name="patient"/>
      <xsl:apply-templates select="cda:author"/>
      <xsl:call-template name="required">
        <xsl:with-param name="value" select="cda:author/cda:assignedAuthor/cda:id/@extension"/>
        <xsl:with-param name="element" select="'ClinicalDocument/author/assignedAuthor/id'"/>
      </xsl:call-template>
      <xsl:apply-templates select="cda:legalAuthenticator"/>
      <xsl:call-template name="event-codes"/>
      <xsl:call-template name="reference-ids"/>
      <xsl:for-each select="cda:relatedDocument[@typeCode='RPLC']/cda:parentDocument/cda:id">
        <m:replacedDocument root="{@root}" extension="{@extension}"/>
      </xsl:for-each>
    </m:metadata>
  </xsl:template>

  <!-- m:missing when $value is empty -->
  <xsl:template name="required">
    <xsl:param name="value"/>
    <xsl:param name="element"/>
    <xsl:if test="not($value) or normalize-space($value[1]) = ''">
      <m:missing element="{$element}"/>
    </xsl:if>
  </xsl:template>

  <!-- uniqueId, setId/version, title, language -->
  <xsl:template name="document-ids">
    <xsl:call-template name="required">
      <xsl:with-param name="value" select="cda:id/@root"/>
      <xsl:with-param name="element" select="'ClinicalDocument/id/@root'"/>
    </xsl:call-template>
    <m:uniqueId root="{cda:id/@root}" extension="{cda:id/@extension}"/>
    <xsl:if test="cda:setId">
      <m:setId root="{cda:setId/@root}" extension="{cda:setId/@extension}"
               version="{cda:versionNumber/@value}"/>
    </xsl:if>
    <xsl:call-template name="required">
      <xsl:with-param name="value" select="cda:title"/>
      <xsl:with-param name="element" select="'ClinicalDocument/title'"/>
    </xsl:call-template>
    <m:title><xsl:value-of select="normalize-space(cda:title)"/></m:title>
    <xsl:call-template name="required">
      <xsl:with-param name="value" select="cda:languageCode/@code"/>
      <xsl:with-param name="element" select="'ClinicalDocument/languageCode/@code'"/>
    </xsl:call-template>
    <m:languageCode><xsl:value-of select="cda:languageCode/@code"/></m:languageCode>
  </xsl:template>

  <!-- typeCode, classCode, formatCode, confidentiality, facility type, practice setting -->
  <xsl:template name="codes">
    <xsl:call-template name="required">
      <xsl:with-param name="value" select="cda:code/@code"/>
      <xsl:with-param name="element" select="'ClinicalDocument/code/@code'"/>
    </xsl:call-template>
    <m:typeCode code="{cda:code/@code}" scheme="{cda:code/@codeSystem}" display="{cda:code/@displayName}"/>
    <xsl:call-template name="class-code"/>
    <xsl:call-template name="format-code"/>
    <xsl:call-template name="required">
      <xsl:with-param name="value" select="cda:confidentialityCode/@code"/>
      <xsl:with-param name="element" select="'ClinicalDocument/confidentialityCode/@code'"/>
    </xsl:call-template>
    <xsl:for-each select="cda:confidentialityCode">
      <m:confidentialityCode code="{@code}" scheme="{@codeSystem}" display="{@displayName}"/>
    </xsl:for-each>
    <xsl:variable name="facility" select="cda:componentOf/cda:encompassingEncounter/cda:location/cda:healthCareFacility/cda:code"/>
    <xsl:call-template name="required">
      <xsl:with-param name="value" select="$facility/@code"/>
      <xsl:with-param name="element" select="'ClinicalDocument/componentOf/encompassingEncounter/location/healthCareFacility/code'"/>
    </xsl:call-template>
    <xsl:if test="$facility/@code">
      <m:healthcareFacilityTypeCode code="{$facility/@code}" scheme="{$facility/@codeSystem}" display="{$facility/@displayName}"/>
    </xsl:if>
    <xsl:call-template name="practice-setting"/>
  </xsl:template>

  <!-- classCode from the LOINC typeCode (ASS_X04 subset for imaging; extend here) -->
  <xsl:template name="class-code">
    <xsl:choose>
      <xsl:when test="cda:code/@code = '18748-4'">
        <m:classCode code="10" scheme="1.2.250.1.213.1.1.4.1" display="Compte rendu"/>
      </xsl:when>
      <xsl:when test="cda:code/@code">
        <m:missing element="classCode: no DMP classCode mapped for ClinicalDocument/code {cda:code/@code}"/>
      </xsl:when>
    </xsl:choose>
  </xsl:template>

  <!-- formatCode: N1 (XDS-SD) vs N3 (template-based, ASS_A11) -->
  <xsl:template name="format-code">
    <xsl:choose>
      <xsl:when test="cda:templateId/@root = '1.3.6.1.4.1.19376.1.2.20' or cda:component/cda:nonXMLBody">
        <m:formatCode code="urn:ihe:iti:xds-sd:pdf:2008" scheme="{$FORMAT_SCHEME}" display="Document à corps non structuré en Pdf/A-1" level="N1"/>
      </xsl:when>
      <xsl:when test="cda:templateId/@root = '1.2.250.1.213.1.1.1.45'">
        <m:formatCode code="urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013" scheme="{$FORMAT_SCHEME}" display="CR d'imagerie médicale" level="N3"/>
      </xsl:when>
      <xsl:otherwise>
        <m:missing element="ClinicalDocument/templateId (no formatCode for the template: expected 1.2.250.1.213.1.1.1.45 or XDS-SD 1.3.6.1.4.1.19376.1.2.20)"/>
      </xsl:otherwise>
    </xsl:choose>
  </xsl:template>

  <!-- practiceSettingCode: the performer's organisation, else the author's -->
  <xsl:template name="practice-setting">
    <xsl:variable name="performer" select="cda:documentationOf/cda:serviceEvent/cda:performer/cda:assignedEntity/cda:representedOrganization/cda:standardIndustryClassCode[@code]"/>
    <xsl:variable name="author" select="cda:author/cda:assignedAuthor/cda:representedOrganization/cda:standardIndustryClassCode[@code]"/>
    <xsl:choose>
      <xsl:when test="$performer">
        <m:practiceSettingCode code="{$performer[1]/@code}" scheme="{$performer[1]/@codeSystem}" display="{$performer[1]/@displayName}"/>
      </xsl:when>
      <xsl:when test="$author">
        <m:practiceSettingCode code="{$author[1]/@code}" scheme="{$author[1]/@codeSystem}" display="{$author[1]/@displayName}"/>
      </xsl:when>
      <xsl:otherwise>
        <m:missing element="ClinicalDocument/documentationOf/serviceEvent/performer/assignedEntity/representedOrganization/standardIndustryClassCode"/>
      </xsl:otherwise>
    </xsl:choose>
  </xsl:template>

  <!-- creationTime, serviceStartTime, serviceStopTime (raw CDA TS; the engine converts to UTC) -->
  <xsl:template name="times">
    <xsl:call-template name="required">
      <xsl:with-param name="value" select="cda:effectiveTime/@value"/>
      <xsl:with-param name="element" select="'ClinicalDocument/effectiveTime/@value'"/>
    </xsl:call-template>
    <m:creationTime><xsl:value-of select="cda:effectiveTime/@value"/></m:creationTime>
    <xsl:variable name="low" select="cda:documentationOf/cda:serviceEvent/cda:effectiveTime/cda:low/@value"/>
    <xsl:variable name="high" select="cda:documentationOf/cda:serviceEvent/cda:effectiveTime/cda:high/@value"/>
    <xsl:call-template name="required">
      <xsl:with-param name="value" select="$low"/>
      <xsl:with-param name="element" select="'ClinicalDocument/documentationOf/serviceEvent/effectiveTime/low/@value'"/>
    </xsl:call-template>
    <!-- several exams: the engine keeps the earliest start and the latest stop -->
    <xsl:for-each select="$low"><m:serviceStartTime><xsl:value-of select="."/></m:serviceStartTime></xsl:for-each>
    <xsl:for-each select="$high"><m:serviceStopTime><xsl:value-of select="."/></m:serviceStopTime></xsl:for-each>
  </xsl:template>

  <!-- patient ids (INS and IPP) and sourcePatientInfo -->
  <xsl:template name="patient">
    <xsl:variable name="role" select="cda:recordTarget/cda:patientRole"/>
    <xsl:variable name="ins" select="$role/cda:id[contains($INS_OIDS, concat('|', @root, '|'))]"/>
    <xsl:variable name="ipp" select="$role/cda:id[@extension and not(contains($INS_OIDS, concat('|', @root, '|')))]"/>
    <xsl:call-template name="required">
      <xsl:with-param name="value" select="$ins/@extension"/>
      <xsl:with-param name="element" select="'ClinicalDocument/recordTarget/patientRole/id (INS)'"/>
    </xsl:call-template>
    <xsl:for-each select="$ins[1]">
      <m:patientId root="{@root}" extension="{@extension}"/>
    </xsl:for-each>
    <xsl:choose>
      <xsl:when test="$ipp">
        <m:sourcePatientId><xsl:value-of select="concat($ipp[1]/@extension, '^^^&amp;', $ipp[1]/@root, '&amp;ISO^PI')"/></m:sourcePatientId>
      </xsl:when>
      <xsl:when test="$ins">
        <m:sourcePatientId><xsl:value-of select="concat($ins[1]/@extension, '^^^&amp;', $ins[1]/@root, '&amp;ISO^PI')"/></m:sourcePatientId>
      </xsl:when>
    </xsl:choose>
    <xsl:variable name="patient" select="$role/cda:patient"/>
    <!-- birth names (qualifier BR) first, as the INS requires; else the first name given -->
    <xsl:variable name="family">
      <xsl:choose>
        <xsl:when test="$patient/cda:name/cda:family[@qualifier='BR']"><xsl:value-of select="$patient/cda:name/cda:family[@qualifier='BR'][1]"/></xsl:when>
        <xsl:otherwise><xsl:value-of select="$patient/cda:name/cda:family[1]"/></xsl:otherwise>
      </xsl:choose>
    </xsl:variable>
    <xsl:variable name="given">
      <xsl:choose>
        <xsl:when test="$patient/cda:name/cda:given[@qualifier='BR']"><xsl:value-of select="$patient/cda:name/cda:given[@qualifier='BR'][1]"/></xsl:when>
        <xsl:otherwise><xsl:value-of select="$patient/cda:name/cda:given[1]"/></xsl:otherwise>
      </xsl:choose>
    </xsl:variable>
    <xsl:if test="normalize-space($family) != ''">
      <m:sourcePatientInfo>
        <xsl:text>PID-5|</xsl:text>
        <xsl:call-template name="hl7"><xsl:with-param name="text" select="$family"/></xsl:call-template>
        <xsl:text>^</xsl:text>
        <xsl:call-template name="hl7"><xsl:with-param name="text" select="$given"/></xsl:call-template>
        <xsl:text>^^^^^L</xsl:text>
      </m:sourcePatientInfo>
    </xsl:if>
    <xsl:if test="$patient/cda:birthTime/@value">
      <m:sourcePatientInfo><xsl:value-of select="concat('PID-7|', substring($patient/cda:birthTime/@value, 1, 8))"/></m:sourcePatientInfo>
    </xsl:if>
    <xsl:if test="$patient/cda:administrativeGenderCode/@code">
      <m:sourcePatientInfo><xsl:value-of select="concat('PID-8|', $patient/cda:administrativeGenderCode/@code)"/></m:sourcePatientInfo>
    </xsl:if>
  </xsl:template>

  <!-- HL7 v2 escaping of free text put inside XCN/XON/CE strings (\ & ^ ~ |) -->
  <xsl:template name="hl7">
    <xsl:param name="text"/>
    <xsl:call-template name="replace">
      <xsl:with-param name="from" select="'|'"/><xsl:with-param name="to" select="'\F\'"/>
      <xsl:with-param name="text">
        <xsl:call-template name="replace">
          <xsl:with-param name="from" select="'~'"/><xsl:with-param name="to" select="'\R\'"/>
          <xsl:with-param name="text">
            <xsl:call-template name="replace">
              <xsl:with-param name="from" select="'^'"/><xsl:with-param name="to" select="'\S\'"/>
              <xsl:with-param name="text">
                <xsl:call-template name="replace">
                  <xsl:with-param name="from" select="'&amp;'"/><xsl:with-param name="to" select="'\T\'"/>
                  <xsl:with-param name="text">
                    <xsl:call-template name="replace">
                      <xsl:with-param name="from" select="'\'"/><xsl:with-param name="to" select="'\E\'"/>
                      <xsl:with-param name="text" select="normalize-space($text)"/>
                    </xsl:call-template>
                  </xsl:with-param>
                </xsl:call-template>
              </xsl:with-param>
            </xsl:call-template>
          </xsl:with-param>
        </xsl:call-template>
      </xsl:with-param>
    </xsl:call-template>
  </xsl:template>

  <xsl:template name="replace">
    <xsl:param name="text"/>
    <xsl:param name="from"/>
    <xsl:param name="to"/>
    <xsl:choose>
      <xsl:when test="contains($text, $from)">
        <xsl:value-of select="concat(substring-before($text, $from), $to)"/>
        <xsl:call-template name="replace">
          <xsl:with-param name="text" select="substring-after($text, $from)"/>
          <xsl:with-param name="from" select="$from"/>
          <xsl:with-param name="to" select="$to"/>
        </xsl:call-template>
      </xsl:when>
      <xsl:otherwise><xsl:value-of select="$text"/></xsl:otherwise>
    </xsl:choose>
  </xsl:template>

  <!-- XCN: id^FAMILY^Given^^^^^^&OID&ISO^D^^^IDNPS -->
  <xsl:template name="xcn">
    <xsl:param name="entity"/>
    <xsl:param name="person"/>
    <xsl:value-of select="concat($entity/cda:id/@extension, '^')"/>
    <xsl:call-template name="hl7"><xsl:with-param name="text" select="$person/cda:name/cda:family[1]"/></xsl:call-template>
    <xsl:text>^</xsl:text>
    <xsl:call-template name="hl7"><xsl:with-param name="text" select="$person/cda:name/cda:given[1]"/></xsl:call-template>
    <xsl:value-of select="concat('^^^^^^&amp;', $entity/cda:id/@root, '&amp;ISO^D^^^',
      substring('IDNPS', 1, 5 * number($entity/cda:id/@root = $RPPS_OID)))"/>
  </xsl:template>

  <!-- XON: Name^^^^^&OID&ISO^IDNST^^^id -->
  <xsl:template name="xon">
    <xsl:param name="org"/>
    <xsl:call-template name="hl7"><xsl:with-param name="text" select="$org/cda:name"/></xsl:call-template>
    <xsl:value-of select="concat('^^^^^&amp;', $org/cda:id/@root, '&amp;ISO^IDNST^^^', $org/cda:id/@extension)"/>
  </xsl:template>

  <xsl:template match="cda:author">
    <xsl:variable name="aa" select="cda:assignedAuthor"/>
    <m:author>
      <xsl:if test="$aa/cda:id/@extension">
        <m:person>
          <xsl:call-template name="xcn">
            <xsl:with-param name="entity" select="$aa"/>
            <xsl:with-param name="person" select="$aa/cda:assignedPerson"/>
          </xsl:call-template>
        </m:person>
      </xsl:if>
      <xsl:for-each select="$aa/cda:representedOrganization[cda:id/@extension]">
        <m:institution>
          <xsl:call-template name="xon"><xsl:with-param name="org" select="."/></xsl:call-template>
        </m:institution>
      </xsl:for-each>
      <xsl:for-each select="cda:functionCode[@code]">
        <m:role>
          <xsl:value-of select="concat(@code, '^')"/>
          <xsl:call-template name="hl7"><xsl:with-param name="text" select="@displayName"/></xsl:call-template>
          <xsl:value-of select="concat('^', @codeSystem)"/>
        </m:role>
      </xsl:for-each>
      <xsl:for-each select="$aa/cda:code[@code]">
        <m:specialty>
          <xsl:value-of select="concat(@code, '^')"/>
          <xsl:call-template name="hl7"><xsl:with-param name="text" select="@displayName"/></xsl:call-template>
          <xsl:value-of select="concat('^', @codeSystem)"/>
        </m:specialty>
      </xsl:for-each>
    </m:author>
  </xsl:template>

  <xsl:template match="cda:legalAuthenticator">
    <xsl:if test="cda:assignedEntity/cda:id/@extension">
      <m:legalAuthenticator code="{cda:assignedEntity/cda:code/@code}">
        <xsl:call-template name="xcn">
          <xsl:with-param name="entity" select="cda:assignedEntity"/>
          <xsl:with-param name="person" select="cda:assignedEntity/cda:assignedPerson"/>
        </xsl:call-template>
      </m:legalAuthenticator>
    </xsl:if>
  </xsl:template>

  <!-- eventCodeList: modality (JDV 1.2.250.1.213.1.1.5.618), region (…695), documented act -->
  <xsl:template name="event-codes">
    <xsl:for-each select="cda:documentationOf/cda:serviceEvent/cda:code">
      <xsl:for-each select="cda:translation[cda:qualifier/cda:name/@code = '121139']">
        <m:eventCode code="{@code}" scheme="1.2.250.1.213.1.1.5.618" display="{@displayName}"/>
      </xsl:for-each>
      <xsl:for-each select="cda:translation[cda:qualifier/cda:name/@code = '39111-0']">
        <m:eventCode code="{@code}" scheme="1.2.250.1.213.1.1.5.695" display="{@displayName}"/>
      </xsl:for-each>
    </xsl:for-each>
  </xsl:template>

  <!-- referenceIdList: accession number, Study Instance UID, placer order (JDV_J231) -->
  <xsl:template name="reference-ids">
    <xsl:for-each select="cda:inFulfillmentOf/cda:order/ps3-20:accessionNumber[@extension]">
      <m:referenceId><xsl:value-of select="concat(@extension, '^^^&amp;', @root, '&amp;ISO^urn:ihe:iti:xds:2013:accession')"/></m:referenceId>
    </xsl:for-each>
    <xsl:for-each select="cda:documentationOf/cda:serviceEvent/cda:id[@root]">
      <m:referenceId><xsl:value-of select="concat(@root, '^^^^urn:ihe:iti:xds:2016:studyInstanceUID')"/></m:referenceId>
    </xsl:for-each>
    <xsl:for-each select="cda:inFulfillmentOf/cda:order/cda:id[@extension]">
      <m:referenceId><xsl:value-of select="concat(@extension, '^^^&amp;', @root, '&amp;ISO^urn:ihe:iti:xds:2013:order')"/></m:referenceId>
    </xsl:for-each>
  </xsl:template>

</xsl:stylesheet>
